//! The GetRedisAllSession wire model and its tolerant, streaming decoding.
//!
//! The body is never materialised as a `Vec` of sessions: each session goes straight into a
//! [`Fold`]. Real answers are loose about types (`Age` and `Count` are strings, `Code` is
//! sometimes `"200"`), so every scalar is decoded leniently: numbers from strings and strings
//! from numbers, `null` as absent, unknown fields skipped. What is not a GetRedisAllSession
//! answer at all is a [`DecodeError`].
//!
//! Two decoders implement this. [`decode_reference`], in this module, is a serde visitor over
//! `serde_json`: it defines the behaviour. [`decode`] runs the byte scanner of `das::scan`
//! first, which reads real answers in less time than `serde_json` takes merely to validate
//! them (BENCHMARKS.md), and falls back to the reference for anything the scanner leaves to it;
//! differential tests and the fuzz target hold the two to the same answers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::answer::{DataMeta, Envelope, Field, Ints, Texts};
use crate::acs::truncate;
use crate::snapshot::{Fold, Limits, Snapshot};

/// Why a body could not be turned into a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The API said no: `Code` other than 200. The code is kept verbatim for the error label.
    #[error("API error {code}: {message}")]
    Api { code: String, message: String },
    /// JSON that is not a GetRedisAllSession answer, or not JSON at all.
    #[error("invalid response: {0}")]
    Invalid(String),
}

/// A scalar that may arrive as a number, a numeric string, or `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LenientInt(Option<i64>);

impl<'de> serde::Deserialize<'de> for LenientInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientInt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer, a numeric string or null")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LenientInt, E> {
                Ok(LenientInt(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LenientInt, E> {
                Ok(LenientInt(Some(i64::try_from(v).unwrap_or(i64::MAX))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LenientInt, E> {
                // `as` saturates and maps NaN to 0: exactly the clamping wanted for a count.
                Ok(LenientInt(v.is_finite().then_some(v as i64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientInt, E> {
                let t = v.trim();
                // A non-numeric string is treated as absent rather than failing the whole answer.
                Ok(LenientInt(t.parse::<i64>().ok().or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| f as i64)
                })))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LenientInt, E> {
                Ok(LenientInt(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LenientInt, E> {
                Ok(LenientInt(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<LenientInt, E> {
                Ok(LenientInt(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl LenientInt {
    /// Negative sizes and durations make no sense; they count as 0.
    fn non_negative(self) -> u64 {
        self.0.map_or(0, |v| v.max(0) as u64)
    }
}

/// A boolean that may arrive as `"true"`/`"false"`; anything else counts as absent. Decoded
/// without building a `serde_json::Value`.
#[derive(Debug, Clone, Copy, Default)]
struct LenientBool(Option<bool>);

impl<'de> serde::Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientBool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LenientBool, E> {
                Ok(LenientBool(Some(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientBool, E> {
                Ok(LenientBool(v.parse().ok()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LenientBool, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientBool(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LenientBool, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientBool(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that may arrive as a number or `null`; borrowed from the body when it has no escapes.
#[derive(Debug, Default, PartialEq)]
struct LenientStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LenientStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl LenientStr<'_> {
    fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

/// A session key, matched by the table of `das::answer` on its raw bytes.
struct SessionKey(Field);

impl<'de> serde::Deserialize<'de> for SessionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SessionKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a session field name")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SessionKey, E> {
                Ok(SessionKey(Field::from_key(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SessionKey, E> {
                Ok(SessionKey(Field::from_key(v.as_bytes())))
            }
        }
        // Asking for bytes lets serde_json hand the key over raw: matching a field name needs no
        // UTF-8 validation, which profiling showed was a large share of the decode (see
        // BENCHMARKS.md).
        d.deserialize_bytes(V)
    }
}

/// One element of `Data.Sessions`, folded as soon as its object closes: fields are borrowed from
/// the body and nothing outlives the element.
struct SessionSeed<'f>(&'f mut Fold);

impl<'de> DeserializeSeed<'de> for SessionSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SessionSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a session object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut texts: Texts<LenientStr<'de>> = Texts::default();
        let mut ints = Ints::default();
        while let Some(SessionKey(field)) = map.next_key()? {
            match field {
                Field::Text(f) => *texts.get_mut(f) = map.next_value()?,
                Field::Int(f) => *ints.get_mut(f) = map.next_value::<LenientInt>()?.0,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let texts = Texts {
            node_id: texts.node_id.as_str(),
            cmd: texts.cmd.as_str(),
            name: texts.name.as_str(),
            flags: texts.flags.as_str(),
            client: texts.client.as_str(),
        };
        texts.add_session(&ints, self.0);
        Ok(())
    }
}

/// One element of `Data.SourceStats`; `Ids` is skipped without being collected.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct WireSource<'a> {
    #[serde(borrow)]
    key: LenientStr<'a>,
    count: LenientInt,
}

/// Folds `Data.Sessions` element by element.
struct SessionsSeed<'f>(&'f mut Fold);

impl<'de> DeserializeSeed<'de> for SessionsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SessionsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of sessions")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(SessionSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// Folds `Data.SourceStats`.
struct SourcesSeed<'f>(&'f mut Fold);

impl<'de> DeserializeSeed<'de> for SourcesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SourcesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of source statistics")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(s) = seq.next_element::<WireSource<'de>>()? {
            self.0.add_source(s.key.as_str(), s.count.non_negative());
        }
        Ok(())
    }
}

/// Decodes `Data`: `null` gives `None`, an object gives its metadata (sessions go to the fold).
struct DataSeed<'f>(&'f mut Fold);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Option<DataMeta>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Option<DataMeta>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the Data object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut meta = DataMeta::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "Sessions" => map.next_value_seed(SessionsSeed(self.0))?,
                "SourceStats" => map.next_value_seed(SourcesSeed(self.0))?,
                "Total" => meta.total = map.next_value::<LenientInt>()?.0.map(|v| v.max(0) as u64),
                "Timestamp" => meta.timestamp_ms = map.next_value::<LenientInt>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(meta))
    }
}

struct EnvelopeSeed<'f>(&'f mut Fold);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a GetRedisAllSession answer object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut env = Envelope::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "Code" => env.code = map.next_value::<LenientStr>()?.0.map(Cow::into_owned),
                "Message" => env.message = map.next_value::<LenientStr>()?.0.map(Cow::into_owned),
                "Success" => env.success = map.next_value::<LenientBool>()?.0,
                "Data" => env.data = Some(map.next_value_seed(DataSeed(self.0))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(env)
    }
}

fn is_ok_code(code: &str) -> bool {
    matches!(code.trim(), "200" | "Success" | "OK")
}

/// Decodes one GetRedisAllSession body straight into a [`Snapshot`].
///
/// The byte scanner (`das::scan`) does the work; when it gives up (a body that is not JSON, or a
/// shape it leaves to serde), [`decode_reference`] decides, so results and errors are exactly
/// the reference's.
pub fn decode(body: &[u8], limits: &Limits) -> Result<Snapshot, DecodeError> {
    let mut fold = Fold::for_limits(limits);
    match super::scan::scan(body, &mut fold) {
        Some(env) => conclude(env, fold, limits),
        None => decode_reference(body, limits),
    }
}

/// How the byte scanner read one body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// False when the scanner gave up and the reference decoder decided.
    pub scanned: bool,
    /// Sessions in the body (0 when not scanned).
    pub sessions: u64,
    /// Sessions read by a learned template: the fast path.
    pub by_template: u64,
}

/// How [`decode`] reads `body`: for the decode benchmark's fast-path share, and for the tests
/// and the fuzz target that hold real-looking answers to the fast path.
pub fn scan_report(body: &[u8]) -> ScanReport {
    let mut fold = Fold::new();
    match super::scan::scan_counting(body, &mut fold) {
        Some((_, by_template)) => ScanReport {
            scanned: true,
            sessions: fold.sessions(),
            by_template,
        },
        None => ScanReport::default(),
    }
}

/// The serde decoder: the reference implementation of [`decode`]. Kept because it defines the
/// behaviour the scanner must match (the differential tests compare the two), and because
/// `decode` falls back to it for bodies the scanner will not judge, which gives those their
/// exact serde_json error message.
pub fn decode_reference(body: &[u8], limits: &Limits) -> Result<Snapshot, DecodeError> {
    let mut fold = Fold::for_limits(limits);
    let mut de = serde_json::Deserializer::from_slice(body);
    let env = EnvelopeSeed(&mut fold)
        .deserialize(&mut de)
        .and_then(|env| de.end().map(|()| env))
        .map_err(|e| DecodeError::Invalid(without_long_value(e.to_string(), 200)))?;
    conclude(env, fold, limits)
}

/// serde_json's message quotes the offending value (`invalid type: string "…", expected a
/// sequence`). That value comes from the wire and may hold anything, a secret echoed back
/// included; cutting the message through it would leave a piece that the scrubber (which runs
/// later, knowing the secrets) no longer recognises. So a message longer than `max` loses the
/// quoted value whole, and only what is left is cut.
fn without_long_value(message: String, max: usize) -> String {
    if message.chars().count() <= max {
        return message;
    }
    match (message.find('"'), message.rfind('"')) {
        (Some(a), Some(b)) if a < b => {
            truncate(&format!("{}\"…\"{}", &message[..a], &message[b + 1..]), max)
        }
        _ => truncate(&message, max),
    }
}

/// Turns a fully read envelope and its fold into the answer's snapshot or error.
fn conclude(env: Envelope, fold: Fold, limits: &Limits) -> Result<Snapshot, DecodeError> {
    if let Some(code) = env.code.as_deref().filter(|c| !is_ok_code(c)) {
        return Err(DecodeError::Api {
            code: code.to_owned(),
            // Whole: cutting comes after scrubbing (`acs::Error::scrubbed`).
            message: env.message.unwrap_or_default(),
        });
    }
    if env.success == Some(false) {
        return Err(DecodeError::Invalid(format!(
            "Success is false: {}",
            env.message.as_deref().unwrap_or("no message")
        )));
    }
    match env.data {
        None => Err(DecodeError::Invalid("no Data in the answer".into())),
        Some(None) => Err(DecodeError::Invalid("Data is null".into())),
        Some(Some(meta)) => Ok(fold.finish(limits, meta.total, meta.timestamp_ms)),
    }
}

/// [`conclude`] for the scanner's differential tests.
#[cfg(test)]
pub(crate) fn conclude_for_tests(
    env: Envelope,
    fold: Fold,
    limits: &Limits,
) -> Result<Snapshot, DecodeError> {
    conclude(env, fold, limits)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use proptest::strategy::Strategy;

    use super::*;
    use crate::acs::error_code;
    use crate::snapshot::{flag_name, FLAG_UNKNOWN};

    /// The example answer from the vendor's reference page, verbatim.
    const VENDOR_EXAMPLE: &str = r#"{
      "Code": 200, "Message": "Successful",
      "Data": {
        "Timestamp": 1660100753556, "Total": 2,
        "Sessions": [{
            "Sub": 0, "Psub": 0, "Idle": 8, "Flags": "N", "Oll": 0, "QbufFree": 0, "Multi": -1,
            "Omem": 0, "Qbuf": 0, "Name": "test", "Obl": 0, "Client": "172.16.XX.XX", "Cmd": "PING",
            "Id": 9080586, "Addr": "172.16.XX.XX:53458", "NodeId": "r-2zemyfd1sh1u2i****-proxy-14#1679****",
            "Age": "12", "Db": 0, "Events": "r", "Fd": 73, "ClientDesc": "prod ip"
        }],
        "SourceStats": [{"Key": "172.16.XX.XX", "Count": "1", "Ids": [9080586]}]
      },
      "RequestId": "40C6E9AF-6C23-5614-AA83-34344CC6****", "Success": true
    }"#;

    fn ok(body: &str) -> Snapshot {
        decode(body.as_bytes(), &Limits::default()).expect("decodes")
    }

    #[test]
    fn vendor_example() {
        let s = ok(VENDOR_EXAMPLE);
        assert_eq!(s.sessions, 1);
        assert_eq!(s.reported_total, 2);
        assert_eq!(s.timestamp_ms, Some(1_660_100_753_556));
        assert_eq!(
            s.by_node,
            vec![("r-2zemyfd1sh1u2i****-proxy-14#1679****".into(), 1)]
        );
        assert_eq!(s.by_command, vec![("ping".into(), 1)]);
        assert_eq!(s.by_client_name, vec![("test".into(), 1)]);
        assert_eq!(s.by_source, vec![("172.16.XX.XX".into(), 1)]);
        assert_eq!(s.by_db, vec![(Some(0), 1)]);
        assert_eq!(s.in_transaction, 0);
        assert_eq!(s.age.sum, 12);
        assert_eq!(s.idle.sum, 8);
        let none = (0..=FLAG_UNKNOWN)
            .find(|&i| flag_name(i) == "none")
            .unwrap();
        assert_eq!(s.by_flag[none], 1);
    }

    #[test]
    fn numbers_as_strings_and_strings_as_numbers() {
        let s = ok(
            r#"{"Code":"200","Success":"true","Data":{"Total":"3","Timestamp":"1000",
            "Sessions":[{"Idle":"30","Age":45,"Db":"2","Multi":"1","Qbuf":"2048","Name":12345,
                         "Cmd":null,"NodeId":null,"Omem":1.5e3}],
            "SourceStats":[{"Key":"10.0.0.1","Count":7},{"Key":"10.0.0.2","Count":"x"}]}}"#,
        );
        assert_eq!(s.reported_total, 3);
        assert_eq!(s.timestamp_ms, Some(1000));
        assert_eq!(s.idle.sum, 30);
        assert_eq!(s.age.sum, 45);
        assert_eq!(s.by_db, vec![(Some(2), 1)]);
        assert_eq!(s.in_transaction, 1);
        assert_eq!(s.query_buffer_max_bytes, 2048);
        assert_eq!(s.output_buffer_max_bytes, 1500);
        assert_eq!(s.by_client_name, vec![("12345".into(), 1)]);
        assert_eq!(s.by_command, vec![("".into(), 1)]);
        assert_eq!(s.by_node, vec![("".into(), 1)]);
        assert_eq!(
            s.by_source,
            vec![("10.0.0.1".into(), 7), ("10.0.0.2".into(), 0)]
        );
    }

    #[test]
    fn missing_fields_and_escapes() {
        let s = ok(
            r#"{"Data":{"Sessions":[{}, {"Name":"a\"b\\c\n"}],"Unknown":{"x":[1,2]}},"Extra":1}"#,
        );
        assert_eq!(s.sessions, 2);
        assert_eq!(s.reported_total, 2, "no Total: the listed count");
        assert_eq!(s.in_transaction, 0, "absent Multi is outside a transaction");
        assert!(s.by_client_name.iter().any(|(n, _)| n == "a\"b\\c\n"));
        assert_eq!(s.by_db, vec![(None, 2)]);
    }

    #[test]
    fn empty_instance() {
        let s =
            ok(r#"{"Code":200,"Success":true,"Data":{"Total":0,"Sessions":[],"SourceStats":[]}}"#);
        assert_eq!(s.sessions, 0);
        assert!(s.by_node.is_empty());
        let s = ok(r#"{"Data":{"Total":0,"Sessions":null,"SourceStats":null}}"#);
        assert_eq!(s.sessions, 0);
    }

    #[test]
    fn api_errors_keep_the_code_verbatim() {
        let e = decode(
            br#"{"RequestId":"x","HostId":"das.cn-shanghai.aliyuncs.com","Code":"Throttling.User","Message":"Request was denied due to user flow control."}"#,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            DecodeError::Api {
                code: "Throttling.User".into(),
                message: "Request was denied due to user flow control.".into()
            }
        );
        assert_eq!(
            error_code(br#"{"Code":"NoPermission","Message":"m"}"#),
            Some(("NoPermission".into(), "m".into()))
        );
        assert_eq!(error_code(b"<html>bad gateway</html>"), None);
        assert_eq!(error_code(br#"{"Code":200}"#), None);
    }

    #[test]
    fn huge_source_counts_saturate() {
        // Three sources at i64::MAX under one key sum past u64::MAX: the fold saturates
        // (seen while writing the fuzz target's by_source check, which sums the same way).
        let big = i64::MAX;
        let body = format!(
            r#"{{"Data":{{"SourceStats":[{{"Key":"a","Count":{big}}},{{"Key":"a","Count":"{big}"}},{{"Key":"a","Count":{big}}}]}}}}"#
        );
        let s = ok(&body);
        assert_eq!(s.by_source, vec![("a".into(), u64::MAX)]);
    }

    /// More sources at `i64::MAX` than the fold keeps: what it sums into `other` saturates
    /// (debug builds panic on an overflow), and so does the scheduler's sticky cap after it.
    #[test]
    fn huge_counts_summed_into_other_saturate() {
        let big = i64::MAX;
        let stats: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"Key":"10.0.0.{i}","Count":{big}}}"#))
            .collect();
        let body = format!(r#"{{"Data":{{"SourceStats":[{}]}}}}"#, stats.join(","));
        let limits = Limits {
            max_sources: 1,
            ..Limits::default()
        };
        for s in [
            decode(body.as_bytes(), &limits).unwrap(),
            decode_reference(body.as_bytes(), &limits).unwrap(),
        ] {
            assert_eq!(s.by_source.len(), 3, "{:?}", s.by_source);
            assert_eq!(
                s.by_source.iter().find(|e| e.0 == "other").unwrap().1,
                u64::MAX
            );
            let mut sticky = crate::sticky::Sticky::default();
            let capped = crate::sticky::cap_counts(s.by_source, 1, &mut sticky);
            assert_eq!(capped.len(), 2, "{capped:?}");
            assert_eq!(capped.iter().find(|e| e.0 == "other").unwrap().1, u64::MAX);
        }
    }

    /// A long value quoted in serde_json's message is left out whole, never cut (a cut piece of
    /// a secret could no longer be scrubbed); a short one stays, it helps to read the error.
    #[test]
    fn a_long_value_in_an_error_is_left_out_whole() {
        let token = format!("STS.{}", "Fake0Token9".repeat(40));
        let body = format!(r#"{{"Data":{{"Sessions":"{token}"}}}}"#);
        for got in [
            decode(body.as_bytes(), &Limits::default()),
            decode_reference(body.as_bytes(), &Limits::default()),
        ] {
            let Err(DecodeError::Invalid(m)) = got else {
                panic!("{got:?}")
            };
            assert!(!m.contains("STS.Fake0"), "{m}");
            assert!(m.contains("expected"), "{m}");
        }
        let short = decode(br#"{"Data":{"Sessions":"abc"}}"#, &Limits::default());
        assert!(
            matches!(&short, Err(DecodeError::Invalid(m)) if m.contains(r#""abc""#)),
            "{short:?}"
        );
    }

    #[test]
    fn not_an_answer_is_invalid_never_a_panic() {
        for body in [
            "",
            "null",
            "[]",
            "42",
            "{",
            r#"{"Data":null}"#,
            r#"{"Success":false,"Code":200}"#,
            r#"{"foo":[1,2,3]}"#,
            r#"{"Data":[1]}"#,
            r#"{"Data":{"Sessions":"abc"}}"#,
            r#"{"Data":{"Sessions":[1,2]}}"#,
            r#"{"Data":{"Sessions":[{"Idle":[1]}]}}"#,
            r#"{"Code":200,"Data":{"Sessions":[]}} trailing"#,
            "<html><body>502 Bad Gateway</body></html>",
        ] {
            assert!(
                matches!(
                    decode(body.as_bytes(), &Limits::default()),
                    Err(DecodeError::Invalid(_))
                ),
                "{body:?} must be invalid"
            );
        }
    }

    #[test]
    fn truncated_vendor_example_is_invalid() {
        for cut in (0..VENDOR_EXAMPLE.len()).step_by(7) {
            assert!(decode(&VENDOR_EXAMPLE.as_bytes()[..cut], &Limits::default()).is_err());
        }
    }

    /// Every breakdown of an accepted answer accounts for each listed session exactly once.
    fn assert_counts_add_up(s: &Snapshot) -> Result<(), proptest::test_runner::TestCaseError> {
        let n = s.sessions;
        let sum = |v: &[(String, u64)]| v.iter().map(|x| x.1).sum::<u64>();
        proptest::prop_assert_eq!(sum(&s.by_node), n);
        proptest::prop_assert_eq!(sum(&s.by_command), n);
        proptest::prop_assert_eq!(sum(&s.by_client_name), n);
        proptest::prop_assert_eq!(s.by_db.iter().map(|x| x.1).sum::<u64>(), n);
        for d in [&s.idle, &s.age, &s.query_buffer, &s.output_buffer] {
            proptest::prop_assert_eq!(d.count(), n);
        }
        proptest::prop_assert!(s.by_flag.iter().all(|&f| f <= n));
        proptest::prop_assert!(s.in_transaction <= n);
        Ok(())
    }

    /// Applies byte edits to `body`: `(position, op, byte)` with op 0 overwrite, 1 insert,
    /// 2 delete (positions wrap around the length), then an optional cut.
    pub(crate) fn apply_edits(
        body: &mut Vec<u8>,
        edits: impl IntoIterator<Item = (usize, u8, u8)>,
        cut: Option<usize>,
    ) {
        for (pos, op, byte) in edits {
            let i = pos % (body.len() + 1);
            match op {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i, byte),
                _ if i < body.len() => {
                    body.remove(i);
                }
                _ => {}
            }
        }
        if let Some(c) = cut {
            body.truncate(c % (body.len() + 1));
        }
    }

    /// A real answer as the simulator (and the service) writes it.
    fn simulated(seed: u64, count: usize) -> Vec<u8> {
        let sessions = crate::simulator::data::sessions(seed, "r-prop", seed % 3, count);
        crate::simulator::data::answer(&sessions, count as u64, 1_700_000_000_000, "PROP")
    }

    /// With attribution on, both decoders keep the same per-client figures, and they add up to
    /// the sessions and match the simulator's own per-client tally.
    #[test]
    fn per_client_figures_agree_between_decoders_and_with_the_sessions() {
        let limits = Limits {
            client_idle_threshold: Some(600),
            ..Limits::default()
        };
        for seed in 0..4 {
            let sessions = crate::simulator::data::sessions(seed, "r-prop", 0, 500);
            let body = crate::simulator::data::answer(&sessions, 500, 1, "PROP");
            let fast = decode(&body, &limits).unwrap();
            assert_eq!(fast, decode_reference(&body, &limits).unwrap());
            let mut want: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            for s in &sessions {
                let e = want.entry(&s.client).or_default();
                e.0 += 1;
                e.1 += u64::from(s.idle >= 600);
                e.2 = e.2.max(s.omem);
            }
            let got: BTreeMap<&str, (u64, u64, u64)> = fast
                .by_client
                .iter()
                .map(|(c, f)| (c.as_str(), (f.sessions, f.long_idle, f.output_buffer_max)))
                .collect();
            assert_eq!(got, want);
            assert!(decode(&body, &Limits::default())
                .unwrap()
                .by_client
                .is_empty());
        }
    }

    /// How a generated integer field is written; every form is one the decoder must accept.
    #[derive(Debug, Clone)]
    enum IntForm {
        Number(i64),
        /// `"123"`, as `Age` comes in the vendor's example.
        Digits(i64),
        /// `" 12 "`: the reference trims.
        Spaced(i64),
        /// `12e0`: a float, truncated to an integer.
        Exponent(i32),
        Null,
        /// A string that is not a number, a boolean: treated as absent.
        Word,
        Bool,
    }

    impl IntForm {
        fn json(&self) -> String {
            match self {
                IntForm::Number(v) => v.to_string(),
                IntForm::Digits(v) => format!("\"{v}\""),
                IntForm::Spaced(v) => format!("\" {v} \""),
                IntForm::Exponent(v) => format!("{v}e0"),
                IntForm::Null => "null".into(),
                IntForm::Word => "\"n/a\"".into(),
                IntForm::Bool => "false".into(),
            }
        }

        /// What the answer means: the value, or absent.
        fn value(&self) -> Option<i64> {
            match *self {
                IntForm::Number(v) | IntForm::Digits(v) | IntForm::Spaced(v) => Some(v),
                IntForm::Exponent(v) => Some(i64::from(v)),
                IntForm::Null | IntForm::Word | IntForm::Bool => None,
            }
        }
    }

    /// How a generated text field is written: a string (escaped where JSON needs it), a
    /// number or a boolean (read as their text), or `null` (absent).
    #[derive(Debug, Clone)]
    enum TextForm {
        Str(&'static str),
        Number(i64),
        Bool(bool),
        Null,
    }

    impl TextForm {
        fn json(&self) -> String {
            match self {
                TextForm::Str(s) => serde_json::to_string(s).unwrap(),
                TextForm::Number(v) => v.to_string(),
                TextForm::Bool(b) => b.to_string(),
                TextForm::Null => "null".into(),
            }
        }

        fn value(&self) -> String {
            match self {
                TextForm::Str(s) => (*s).to_owned(),
                TextForm::Number(v) => v.to_string(),
                TextForm::Bool(b) => b.to_string(),
                TextForm::Null => String::new(),
            }
        }
    }

    /// One generated `"key":value` member of a session.
    #[derive(Debug, Clone)]
    enum Member {
        Int(&'static str, IntForm),
        Text(&'static str, TextForm),
        /// A key the exporter skips, with a value of any shape.
        Other(&'static str, &'static str),
    }

    const INT_KEYS: &[&str] = &[
        "Db", "Sub", "Psub", "Multi", "Qbuf", "QbufFree", "Obl", "Oll", "Omem", "Idle", "Age",
    ];
    const TEXT_KEYS: &[&str] = &["NodeId", "Cmd", "Name", "Flags", "Client"];
    /// Few enough distinct values that no cap applies (caps are tested in snapshot.rs).
    const TEXTS: &[&str] = &[
        "",
        "r-1-db-0",
        "GET",
        "get",
        "app-é中",
        "a\"b",
        "x\\y",
        "line\nnext",
        "😀",
        "N",
        "x",
        "PN",
        "bx",
    ];

    fn arb_member() -> impl proptest::strategy::Strategy<Value = Member> {
        use proptest::prelude::*;
        let int = prop_oneof![
            4 => any::<i64>().prop_map(IntForm::Number),
            4 => (-5i64..100_000_000).prop_map(IntForm::Number),
            2 => (0i64..1_000_000_000_000).prop_map(IntForm::Digits),
            1 => (-50i64..50).prop_map(IntForm::Spaced),
            1 => (-1000i32..1_000_000).prop_map(IntForm::Exponent),
            1 => Just(IntForm::Null),
            1 => Just(IntForm::Word),
            1 => Just(IntForm::Bool),
        ];
        let text = prop_oneof![
            6 => proptest::sample::select(TEXTS).prop_map(TextForm::Str),
            1 => (-3i64..3).prop_map(TextForm::Number),
            1 => any::<bool>().prop_map(TextForm::Bool),
            1 => Just(TextForm::Null),
        ];
        prop_oneof![
            11 => (proptest::sample::select(INT_KEYS), int).prop_map(|(k, v)| Member::Int(k, v)),
            4 => (proptest::sample::select(TEXT_KEYS), text).prop_map(|(k, v)| Member::Text(k, v)),
            2 => (
                proptest::sample::select(&["Id", "Addr", "Events", "Fd"][..]),
                proptest::sample::select(&["1", "\"10.0.0.1:6379\"", "[1,{\"a\":[]}]", "{\"b\":null}", "null", "-1.5e300"][..]),
            ).prop_map(|(k, v)| Member::Other(k, v)),
        ]
    }

    /// What the generated sessions must add up to, computed from the generator's own model.
    #[derive(Debug, Default, PartialEq)]
    struct Expected {
        sessions: u64,
        idle_sum: u64,
        age_sum: u64,
        sub: u64,
        psub: u64,
        obl: u64,
        oll: u64,
        qbuf_free: u64,
        max_qbuf: u64,
        max_omem: u64,
        max_oll: u64,
        in_transaction: u64,
        with_flag: BTreeMap<char, u64>,
        by_db: BTreeMap<Option<i64>, u64>,
        by_node: BTreeMap<String, u64>,
        by_command: BTreeMap<String, u64>,
        by_name: BTreeMap<String, u64>,
    }

    impl Expected {
        /// Adds one session: the last value of a repeated key counts, as in the reference.
        fn add(&mut self, members: &[Member]) {
            let mut ints: BTreeMap<&str, Option<i64>> = BTreeMap::new();
            let mut texts: BTreeMap<&str, String> = BTreeMap::new();
            for m in members {
                match m {
                    Member::Int(k, v) => {
                        ints.insert(k, v.value());
                    }
                    Member::Text(k, v) => {
                        texts.insert(k, v.value());
                    }
                    Member::Other(..) => {}
                }
            }
            let int = |k: &str| ints.get(k).copied().flatten();
            let size = |k: &str| int(k).map_or(0, |v| v.max(0) as u64);
            let text = |k: &str| texts.get(k).cloned().unwrap_or_default();
            self.sessions += 1;
            self.idle_sum = self.idle_sum.saturating_add(size("Idle"));
            self.age_sum = self.age_sum.saturating_add(size("Age"));
            self.sub = self.sub.saturating_add(size("Sub"));
            self.psub = self.psub.saturating_add(size("Psub"));
            self.obl = self.obl.saturating_add(size("Obl"));
            self.oll = self.oll.saturating_add(size("Oll"));
            self.qbuf_free = self.qbuf_free.saturating_add(size("QbufFree"));
            self.max_qbuf = self.max_qbuf.max(size("Qbuf"));
            self.max_omem = self.max_omem.max(size("Omem"));
            self.max_oll = self.max_oll.max(size("Oll"));
            self.in_transaction += u64::from(int("Multi").is_some_and(|m| m >= 0));
            let flags: std::collections::BTreeSet<char> = text("Flags").chars().collect();
            for c in flags.into_iter().filter(|c| "NxPb".contains(*c)) {
                *self.with_flag.entry(c).or_default() += 1;
            }
            // Databases outside 0–255 are one `other` entry, keyed i64::MIN.
            let db = int("Db").map(|d| if (0..=255).contains(&d) { d } else { i64::MIN });
            *self.by_db.entry(db).or_default() += 1;
            *self.by_node.entry(text("NodeId")).or_default() += 1;
            *self
                .by_command
                .entry(text("Cmd").to_ascii_lowercase())
                .or_default() += 1;
            *self.by_name.entry(text("Name")).or_default() += 1;
        }

        /// The same figures read off a decoded snapshot.
        fn of(s: &Snapshot) -> Expected {
            let slot = |name: &str| (0..=FLAG_UNKNOWN).find(|&i| flag_name(i) == name).unwrap();
            let map = |v: &[(String, u64)]| v.iter().cloned().collect::<BTreeMap<_, _>>();
            Expected {
                sessions: s.sessions,
                idle_sum: s.idle.sum,
                age_sum: s.age.sum,
                sub: s.subscriptions_channel,
                psub: s.subscriptions_pattern,
                obl: s.fixed_output_buffer_bytes,
                oll: s.output_list_objects,
                qbuf_free: s.query_buffer_free_bytes,
                max_qbuf: s.query_buffer_max_bytes,
                max_omem: s.output_buffer_max_bytes,
                max_oll: s.output_list_max_objects,
                in_transaction: s.in_transaction,
                with_flag: [
                    ('N', "none"),
                    ('x', "multi"),
                    ('P', "pubsub"),
                    ('b', "blocked"),
                ]
                .into_iter()
                .map(|(c, name)| (c, s.by_flag[slot(name)]))
                .filter(|&(_, n)| n > 0)
                .collect(),
                by_db: s.by_db.iter().copied().collect(),
                by_node: map(&s.by_node),
                by_command: map(&s.by_command),
                by_name: map(&s.by_client_name),
            }
        }
    }

    fn session_json(members: &[Member]) -> String {
        let body: Vec<String> = members
            .iter()
            .map(|m| match m {
                Member::Int(k, v) => format!("\"{k}\":{}", v.json()),
                Member::Text(k, v) => format!("\"{k}\":{}", v.json()),
                Member::Other(k, v) => format!("\"{k}\":{v}"),
            })
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn answer_json(sessions: &[String], total: Option<&IntForm>) -> String {
        let total = total
            .map(|t| format!("\"Total\":{},", t.json()))
            .unwrap_or_default();
        format!(
            r#"{{"Code":200,"Success":true,"Data":{{{total}"Sessions":[{}]}}}}"#,
            sessions.join(",")
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Well-typed answers (every lenient form the API is known to send, unknown keys of any
        /// shape, repeated keys) are accepted, and every figure is what the generated sessions
        /// add up to, computed here from the generator's own model.
        #[test]
        fn generated_answers_add_up(
            sessions in proptest::collection::vec(proptest::collection::vec(arb_member(), 0..24), 0..60),
            total in proptest::option::of((0i64..1_000_000).prop_map(IntForm::Digits)),
        ) {
            let mut want = Expected::default();
            for s in &sessions {
                want.add(s);
            }
            let json: Vec<String> = sessions.iter().map(|s| session_json(s)).collect();
            let body = answer_json(&json, total.as_ref());
            let got = decode(body.as_bytes(), &Limits::default());
            proptest::prop_assert_eq!(&got, &decode_reference(body.as_bytes(), &Limits::default()));
            let got = match got {
                Ok(s) => s,
                Err(e) => return Err(proptest::test_runner::TestCaseError::fail(format!("refused {e}: {body}"))),
            };
            proptest::prop_assert_eq!(Expected::of(&got), want);
            let total = total.and_then(|t| t.value()).map_or(sessions.len() as u64, |t| t as u64);
            proptest::prop_assert_eq!(got.reported_total, total);
            assert_counts_add_up(&got)?;
        }

        /// The same answers with one value of a kept field replaced by an array or an object:
        /// refused as invalid by both decoders, never a panic.
        #[test]
        fn answers_with_a_misshapen_field_are_refused(
            sessions in proptest::collection::vec(proptest::collection::vec(arb_member(), 0..24), 1..30),
            at in proptest::arbitrary::any::<proptest::sample::Index>(),
            key in proptest::sample::select([INT_KEYS, TEXT_KEYS].concat()),
            shape in proptest::sample::select(&["[]", "[1]", "{}", "{\"a\":1}", "[\"x\",{}]"][..]),
        ) {
            let mut json: Vec<String> = sessions.iter().map(|s| session_json(s)).collect();
            let i = at.index(json.len());
            let inner = json[i].trim_start_matches('{').to_owned();
            let sep = if inner == "}" { "" } else { "," };
            json[i] = format!("{{\"{key}\":{shape}{sep}{inner}");
            let body = answer_json(&json, None);
            let got = decode(body.as_bytes(), &Limits::default());
            proptest::prop_assert!(matches!(got, Err(DecodeError::Invalid(_))), "accepted {}", body);
            proptest::prop_assert_eq!(got, decode_reference(body.as_bytes(), &Limits::default()));
        }

        /// A real answer, mutated by a few byte edits, inserts, deletes or a cut: never a panic;
        /// when still accepted, the counts add up.
        #[test]
        fn edited_real_answers_never_panic(
            seed in 0u64..1000,
            count in 0usize..30,
            edits in proptest::collection::vec((0usize..100_000, 0u8..3, proptest::num::u8::ANY), 1..6),
            cut in proptest::option::of(0usize..100_000),
        ) {
            let mut body = simulated(seed, count);
            apply_edits(&mut body, edits, cut);
            if let Ok(s) = decode(&body, &Limits::default()) {
                assert_counts_add_up(&s)?;
            }
            let _ = error_code(&body);
        }

        /// Untouched real answers decode to exactly the sessions they list.
        #[test]
        fn real_answers_decode_exactly(seed in 0u64..1000, count in 0usize..200) {
            let s = decode(&simulated(seed, count), &Limits::default()).unwrap();
            proptest::prop_assert_eq!(s.sessions, count as u64);
            proptest::prop_assert_eq!(s.reported_total, count as u64);
            assert_counts_add_up(&s)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&body, &Limits::default());
            let _ = error_code(&body);
        }

        #[test]
        fn mutated_answers_never_panic(pos in 0usize..600, byte in proptest::num::u8::ANY) {
            let mut body = VENDOR_EXAMPLE.as_bytes().to_vec();
            let i = pos % body.len();
            body[i] = byte;
            if let Ok(s) = decode(&body, &Limits::default()) {
                assert_counts_add_up(&s)?;
            }
        }
    }
}
