//! Event arguments between socketioxide's text form (JSON, each binary attachment replaced
//! by `{"_placeholder":true,"num":N}`) and msgpack with the binaries inline, as the Node
//! adapter carries them. Object keys keep their order both ways.

use std::collections::VecDeque;

use bytes::Bytes;
use socketioxide_core::{Str, Value};

use super::{MAX_DEPTH, Msgpack, WireError};

/// Event arguments (`["event", ...args]`) from socketioxide's text form to msgpack with the
/// binary attachments put back where their placeholders are. Object keys keep their order.
pub fn value_to_msgpack(value: &Value) -> Result<Msgpack, WireError> {
    let Value::Str(text, bins) = value else {
        return Err(WireError::BinaryParser);
    };
    // serde_json refuses nesting deeper than 128, so the walk below is bounded too.
    let parsed: Msgpack = serde_json::from_str(text.as_str())?;
    fill_placeholders(parsed, bins.as_ref())
}

/// Event arguments from msgpack to socketioxide's text form: JSON, with each binary value
/// replaced by a placeholder and moved to the attachments. Object keys keep their order.
pub fn msgpack_to_value(data: &Msgpack) -> Result<Value, WireError> {
    let bins = std::cell::RefCell::new(VecDeque::new());
    let text = serde_json::to_string(&AsJson {
        value: data,
        bins: &bins,
        depth: 0,
    })
    .map_err(|e| {
        if e.to_string().contains("nested") {
            WireError::TooDeep
        } else {
            WireError::Json(e)
        }
    })?;
    let bins = bins.into_inner();
    Ok(Value::Str(Str::from(text), (!bins.is_empty()).then_some(bins)))
}

fn fill_placeholders(v: Msgpack, bins: Option<&VecDeque<Bytes>>) -> Result<Msgpack, WireError> {
    if bins.is_none() {
        // A packet without attachments has no placeholders: an object that looks like
        // one is the sender's data, relayed as it is (as Node does).
        return Ok(v);
    }
    Ok(match v {
        Msgpack::Array(items) => Msgpack::Array(
            items
                .into_iter()
                .map(|i| fill_placeholders(i, bins))
                .collect::<Result<_, _>>()?,
        ),
        Msgpack::Map(entries) => {
            if let Some(num) = placeholder(&entries) {
                let bin = bins
                    .and_then(|b| b.get(num as usize))
                    .ok_or(WireError::MissingAttachment(num))?;
                return Ok(Msgpack::Binary(bin.to_vec()));
            }
            Msgpack::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, fill_placeholders(v, bins)?)))
                    .collect::<Result<_, WireError>>()?,
            )
        }
        other => other,
    })
}

/// `{"_placeholder": true, "num": N}` (socket.io-parser's binary placeholder).
fn placeholder(entries: &[(Msgpack, Msgpack)]) -> Option<u64> {
    let get = |key: &str| entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v);
    if entries.len() == 2 && get("_placeholder") == Some(&Msgpack::Boolean(true)) {
        get("num").and_then(Msgpack::as_u64)
    } else {
        None
    }
}

/// Serializes a msgpack value as JSON the way `JSON.stringify` sees what notepack decoded:
/// binaries become numbered placeholders (collected in `bins`), `undefined` (an extension)
/// null, NaN and infinities null, non-string keys their text.
struct AsJson<'a> {
    value: &'a Msgpack,
    bins: &'a std::cell::RefCell<VecDeque<Bytes>>,
    depth: usize,
}

impl AsJson<'_> {
    fn child<'b>(&'b self, value: &'b Msgpack) -> AsJson<'b> {
        AsJson {
            value,
            bins: self.bins,
            depth: self.depth + 1,
        }
    }
}

impl serde::Serialize for AsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        if self.depth > MAX_DEPTH {
            return Err(S::Error::custom("payload nested too deep"));
        }
        match self.value {
            Msgpack::Nil | Msgpack::Ext(..) => s.serialize_unit(),
            Msgpack::Boolean(b) => s.serialize_bool(*b),
            Msgpack::Integer(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => s.serialize_u64(u),
                (None, Some(i)) => s.serialize_i64(i),
                _ => s.serialize_unit(),
            },
            Msgpack::F32(f) if f.is_finite() => s.serialize_f32(*f),
            Msgpack::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Msgpack::F32(_) | Msgpack::F64(_) => s.serialize_unit(),
            Msgpack::String(text) => s.serialize_str(&String::from_utf8_lossy(text.as_bytes())),
            Msgpack::Binary(b) => {
                let num = {
                    let mut bins = self.bins.borrow_mut();
                    bins.push_back(Bytes::copy_from_slice(b));
                    bins.len() - 1
                };
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("_placeholder", &true)?;
                map.serialize_entry("num", &num)?;
                map.end()
            }
            Msgpack::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&self.child(item))?;
                }
                seq.end()
            }
            Msgpack::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    let key = match k {
                        Msgpack::String(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
                        other => other.to_string(),
                    };
                    map.serialize_entry(&key, &self.child(v))?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::text;
    use super::*;

    #[test]
    fn floats_and_odd_values_read_like_json_stringify() {
        let v = Msgpack::Array(vec![
            "e".into(),
            Msgpack::F64(f64::NAN),
            Msgpack::F64(1.5),
            Msgpack::Ext(0, vec![0]),
            Msgpack::Map(vec![(1.into(), true.into())]),
        ]);
        assert_eq!(
            text(&msgpack_to_value(&v).unwrap()),
            r#"["e",null,1.5,null,{"1":true}]"#
        );
    }
}
