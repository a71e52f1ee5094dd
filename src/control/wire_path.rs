//! Paths on the control socket lose nothing: a JSON string when the path is UTF-8, else
//! `{"bytes_hex": "…"}` with its bytes (a file name is any bytes but `/` and NUL).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Text(String),
    Bytes { bytes_hex: String },
}

fn to_wire(path: &Path) -> Wire {
    match path.to_str() {
        Some(text) => Wire::Text(text.to_owned()),
        None => Wire::Bytes {
            bytes_hex: crate::protocol::hex(path.as_os_str().as_bytes()),
        },
    }
}

fn from_wire<E: serde::de::Error>(wire: Wire) -> Result<PathBuf, E> {
    match wire {
        Wire::Text(text) => Ok(PathBuf::from(text)),
        Wire::Bytes { bytes_hex } => {
            let digits = bytes_hex.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(E::custom("bytes_hex has an odd number of digits"));
            }
            let bytes = digits
                .chunks(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| E::custom("bytes_hex is not hexadecimal"))?;
            Ok(PathBuf::from(OsString::from_vec(bytes)))
        }
    }
}

pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    to_wire(path).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    from_wire(Wire::deserialize(d)?)
}

/// The same for an optional path.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(p) => s.serialize_some(&to_wire(p)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Option::<Wire>::deserialize(d)?.map(from_wire).transpose()
    }
}

/// The same for a list of paths.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| to_wire(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<Wire>::deserialize(d)?
            .into_iter()
            .map(from_wire)
            .collect()
    }
}
