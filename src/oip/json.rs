//! Tensor `data` in the REST binding's JSON: flat or nested arrays of numbers (FP32) or strings
//! (BYTES), flattened in row-major order while parsing, never past the element count the shape
//! declared (a generic JSON tree would cost some 30 bytes per two-byte element first).

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// An element type that JSON `data` can hold.
pub trait Element: Sized {
    /// What the element looks like in JSON, for error messages.
    const EXPECTED: &'static str;
    /// From a JSON number.
    fn from_number(v: f64) -> Option<Self>;
    /// From a JSON string.
    fn from_string(s: &str) -> Option<Self>;
}

impl Element for f32 {
    const EXPECTED: &'static str = "numbers (FP32)";
    fn from_number(v: f64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_string(_: &str) -> Option<Self> {
        None
    }
}

impl Element for Bytes {
    const EXPECTED: &'static str = "strings (BYTES)";
    fn from_number(_: f64) -> Option<Self> {
        None
    }
    fn from_string(s: &str) -> Option<Self> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// The elements of `data`, at most `max` of them.
pub fn flatten<T: Element>(data: &RawValue, max: usize) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(data.get());
    Flatten {
        out: &mut out,
        max,
        _element: PhantomData,
    }
    .deserialize(&mut de)
    .map_err(|e| Error::BadInput(format!("tensor data: {e}")))?;
    Ok(out)
}

struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    max: usize,
    _element: PhantomData<T>,
}

impl<T: Element> Flatten<'_, T> {
    fn push<E: de::Error>(self, value: Option<T>, got: de::Unexpected) -> Result<(), E> {
        let value = value.ok_or_else(|| E::invalid_type(got, &T::EXPECTED))?;
        if self.out.len() == self.max {
            return Err(E::custom(format!(
                "more than the {} elements the shape declares",
                self.max
            )));
        }
        self.out.push(value);
        Ok(())
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} or (nested) arrays of them", T::EXPECTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten { out, max, .. } = self;
        while seq
            .next_element_seed(Flatten {
                out: &mut *out,
                max,
                _element: PhantomData,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_number(v), de::Unexpected::Float(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_number(v as f64), de::Unexpected::Signed(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_number(v as f64), de::Unexpected::Unsigned(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_string(v), de::Unexpected::Str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn nested_and_flat_arrays_flatten_in_row_major_order() {
        let v: Vec<f32> = flatten(&raw("[[1, 2.5], [-3, 4e1]]"), 4).unwrap();
        assert_eq!(v, [1.0, 2.5, -3.0, 40.0]);
        let v: Vec<f32> = flatten(&raw("[7]"), 1).unwrap();
        assert_eq!(v, [7.0]);
        let b: Vec<Bytes> = flatten(&raw(r#"[["a"], ["\u00E9"]]"#), 2).unwrap();
        assert_eq!(b, [Bytes::from("a"), Bytes::from("é")]);
    }

    #[test]
    fn wrong_types_and_too_many_elements_are_refused() {
        assert!(flatten::<f32>(&raw(r#"[1, "2"]"#), 9).is_err());
        assert!(flatten::<Bytes>(&raw("[1]"), 9).is_err());
        assert!(flatten::<f32>(&raw("[true]"), 9).is_err());
        assert!(flatten::<f32>(&raw("[null]"), 9).is_err());
        assert!(flatten::<f32>(&raw("{\"a\": 1}"), 9).is_err());
        let err = flatten::<f32>(&raw("[1, 2, 3]"), 2).unwrap_err();
        assert!(err.to_string().contains("more than the 2"), "{err}");
    }
}
