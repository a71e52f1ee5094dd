use super::*;
use crate::store::KeyFacts;
use std::path::Path;

fn facts(expected: Option<&MasterKey>, versions: u64) -> KeyFacts {
    KeyFacts {
        expected: expected.map(MasterKey::fingerprint),
        versions,
    }
}

fn decide(found: Option<&MasterKey>, f: &KeyFacts, wanted: bool, new: bool) -> KeyAtStart {
    key_at_start(found.cloned(), f, wanted, new, Path::new("/k"))
}

#[test]
fn a_missing_or_other_key_with_encrypted_versions_stops_the_start() {
    let (a, b) = (MasterKey::new([1; 32]), MasterKey::new([2; 32]));
    let held = facts(Some(&a), 3);
    for found in [None, Some(&b)] {
        match decide(found, &held, true, false) {
            KeyAtStart::Refuse(why) => {
                assert!(why.contains(&a.fingerprint()), "{why}");
                assert!(
                    why.contains("/k") && why.contains("--new-master-key"),
                    "{why}"
                );
                assert!(!why.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }
    // Versions from before fingerprints were kept: a missing key still stops the start.
    let unknown = facts(None, 2);
    assert!(matches!(
        decide(None, &unknown, false, false),
        KeyAtStart::Refuse(_)
    ));
    // …and a key found is taken (nothing tells it is another).
    assert!(matches!(
        decide(Some(&b), &unknown, false, false),
        KeyAtStart::Run(Some(_))
    ));
}

#[test]
fn only_the_admin_starts_with_a_new_key_over_encrypted_versions() {
    let (a, b) = (MasterKey::new([1; 32]), MasterKey::new([2; 32]));
    let held = facts(Some(&a), 3);
    assert!(matches!(decide(None, &held, false, true), KeyAtStart::Make));
    match decide(Some(&b), &held, true, true) {
        KeyAtStart::Run(Some(k)) => assert_eq!(k.fingerprint(), b.fingerprint()),
        other => panic!("{other:?}"),
    }
    match decide(Some(&a), &held, true, false) {
        KeyAtStart::Run(Some(k)) => assert_eq!(k.fingerprint(), a.fingerprint()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_encrypted_versions_a_key_is_made_only_when_needed() {
    let none = facts(None, 0);
    assert!(matches!(decide(None, &none, true, false), KeyAtStart::Make));
    assert!(matches!(
        decide(None, &none, false, false),
        KeyAtStart::Run(None)
    ));
    // A key the catalog knew, but no encrypted version of it left: any key runs.
    let a = MasterKey::new([1; 32]);
    let gone = facts(Some(&a), 0);
    assert!(matches!(
        decide(Some(&MasterKey::new([3; 32])), &gone, true, false),
        KeyAtStart::Run(Some(_))
    ));
    assert!(matches!(decide(None, &gone, true, false), KeyAtStart::Make));
}
