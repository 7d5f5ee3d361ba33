//! Message body → [`Event`], or the reason it is refused (the rules and reason codes: see
//! docs/api.md, Events).
//!
//! Pure: the arrival time and the configured currency are passed in. Every refusal carries a
//! stable code (the start of the `x-pulseboard-reason` header) and a human detail.
//!
//! Stricter than JSON itself where readers could disagree: an object that names a key twice is
//! refused at any depth ([`UniqueKeys`]), and a leap second counts in the minute it is written
//! in ([`millis_holding_leap_second`]).

use crate::aggregate::{
    Event, EventKind, Millis, Overflow, MAX_AGE_MS, MAX_AMOUNT_MINOR, MAX_FUTURE_MS,
};
use chrono::{DateTime, FixedOffset};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_ID_CHARS: usize = 128;

/// Why a message was dead-lettered. Rendered as `<code>: <detail>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// A well-formed event that a running sum has no room for (see `Aggregator::admit`).
impl From<Overflow> for Rejection {
    fn from(overflow: Overflow) -> Self {
        Rejection::new("sum_overflow", overflow.to_string())
    }
}

/// What decoding needs besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    pub currency: &'a str,
    pub arrived_at: Millis,
    /// How far before its arrival an event may have occurred: 24 hours, or the shorter
    /// `PULSEBOARD_DEDUPE_WINDOW_SECS` (an order too old for its id to be remembered is too
    /// old to be accepted).
    pub max_age_ms: Millis,
}

impl<'a> DecodeContext<'a> {
    /// The context of a message that arrived at `arrived_at`, with the 24-hour age limit.
    pub fn new(currency: &'a str, arrived_at: Millis) -> Self {
        DecodeContext {
            currency,
            arrived_at,
            max_age_ms: MAX_AGE_MS,
        }
    }
}

pub fn decode(body: &[u8], context: DecodeContext<'_>) -> Result<Event, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!(
                "body is {} bytes, the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| Rejection::new("not_utf8", format!("body is not UTF-8: {e}")))?;
    let UniqueKeys(value) = serde_json::from_str(text).map_err(|e| match e.classify() {
        // The only error of the data rather than the syntax: [`UniqueKeys`]'s.
        serde_json::error::Category::Data => Rejection::new("duplicate_key", e.to_string()),
        _ => Rejection::new("not_json", format!("body is not JSON: {e}")),
    })?;
    let Value::Object(fields) = value else {
        return Err(Rejection::new("not_object", "body is not a JSON object"));
    };

    let id = bounded_string(&fields, "id")?;
    let event_type = required(&fields, "type")?
        .as_str()
        .ok_or_else(|| Rejection::new("invalid_field", "type must be a string"))?;
    let occurred_at = timestamp(&fields, context.arrived_at, context.max_age_ms)?;
    let user_id = bounded_string(&fields, "user_id")?;
    let kind = match event_type {
        "order.placed" => EventKind::OrderPlaced {
            amount_minor: order_amount(&fields, context.currency)?,
        },
        "order.refunded" => EventKind::OrderRefunded {
            amount_minor: order_amount(&fields, context.currency)?,
        },
        "user.active" => EventKind::UserActive,
        "user.signed_out" => EventKind::UserSignedOut,
        _ => EventKind::Other,
    };
    Ok(Event {
        id: id.to_owned(),
        kind,
        occurred_at,
        user_id: user_id.to_owned(),
    })
}

/// A JSON value whose every object, at any depth, names each key once. `Value` itself keeps the
/// last of a repeated key, so `"amount_minor": -5, "amount_minor": 100` would count 100 where
/// another reader of the same message (a producer's check, an audit) may see -5. Built as
/// `Value` builds itself: no allocation beyond the key each entry needs anyway.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut array = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(UniqueKeys(item)) = items.next_element()? {
            array.push(item);
        }
        Ok(Value::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let UniqueKeys(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn required<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Rejection> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(Rejection::new("missing_field", name.to_owned())),
        Some(value) => Ok(value),
    }
}

fn bounded_string<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    let invalid = || {
        Rejection::new(
            "invalid_field",
            format!("{name} must be a string of 1 to {MAX_ID_CHARS} characters"),
        )
    };
    let text = required(fields, name)?.as_str().ok_or_else(invalid)?;
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(invalid());
    }
    // PostgreSQL's text cannot hold U+0000: stored, it would fail its whole batch again and
    // again, stalling every event behind it.
    if text.contains('\0') {
        return Err(Rejection::new(
            "invalid_field",
            format!("{name} must not contain U+0000"),
        ));
    }
    Ok(text)
}

fn timestamp(
    fields: &Map<String, Value>,
    arrived_at: Millis,
    max_age_ms: Millis,
) -> Result<Millis, Rejection> {
    let text = required(fields, "occurred_at")?.as_str().ok_or_else(|| {
        Rejection::new(
            "invalid_field",
            "occurred_at must be an RFC 3339 string with offset",
        )
    })?;
    let occurred_at = DateTime::parse_from_rfc3339(text).map_err(|e| {
        Rejection::new(
            "invalid_field",
            format!("occurred_at is not RFC 3339 with offset: {e}"),
        )
    })?;
    let occurred_at = millis_holding_leap_second(occurred_at);
    if occurred_at > arrived_at + MAX_FUTURE_MS {
        return Err(Rejection::new(
            "too_far_in_future",
            format!("occurred_at {text} is more than 5 minutes ahead of arrival"),
        ));
    }
    if occurred_at < arrived_at - max_age_ms {
        let limit = if max_age_ms == MAX_AGE_MS {
            "24 hours".to_owned()
        } else {
            format!("{} s", max_age_ms / 1_000)
        };
        return Err(Rejection::new(
            "too_old",
            format!("occurred_at {text} is more than {limit} before arrival"),
        ));
    }
    Ok(occurred_at)
}

/// Milliseconds since the epoch. A leap second (`23:59:60`, which chrono keeps as second 59
/// with a nanosecond count past 10⁹) is held at the last millisecond of its minute: counted
/// without it, `23:59:60Z` would become midnight and fall on the next day.
fn millis_holding_leap_second(at: DateTime<FixedOffset>) -> Millis {
    const LAST_MILLISECOND: i64 = 999;
    if at.timestamp_subsec_nanos() >= 1_000_000_000 {
        at.timestamp() * 1_000 + LAST_MILLISECOND
    } else {
        at.timestamp_millis()
    }
}

fn order_amount(fields: &Map<String, Value>, currency: &str) -> Result<i64, Rejection> {
    let Value::Object(data) = required(fields, "data")? else {
        return Err(Rejection::new("invalid_field", "data must be an object"));
    };
    let order_id_ok = matches!(required(data, "order_id")
        .map_err(|_| Rejection::new("missing_field", "data.order_id"))?, Value::String(s) if !s.is_empty());
    if !order_id_ok {
        return Err(Rejection::new(
            "invalid_field",
            "data.order_id must be a non-empty string",
        ));
    }
    let amount = required(data, "amount_minor")
        .map_err(|_| Rejection::new("missing_field", "data.amount_minor"))?;
    let amount_minor = amount
        .as_i64()
        .filter(|amount| (0..=MAX_AMOUNT_MINOR).contains(amount))
        .ok_or_else(|| {
            Rejection::new(
                "invalid_field",
                format!(
                    "data.amount_minor must be an integer from 0 to {MAX_AMOUNT_MINOR}, got {amount}"
                ),
            )
        })?;
    let event_currency = required(data, "currency")
        .map_err(|_| Rejection::new("missing_field", "data.currency"))?
        .as_str()
        .ok_or_else(|| Rejection::new("invalid_field", "data.currency must be a string"))?;
    if event_currency != currency {
        return Err(Rejection::new(
            "wrong_currency",
            format!("data.currency is {event_currency}, this service counts {currency}"),
        ));
    }
    Ok(amount_minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Millis = 1_795_428_930_000; // 2026-11-23T10:15:30Z

    fn context() -> DecodeContext<'static> {
        DecodeContext::new("USD", NOW)
    }

    fn order(kind: &str) -> Value {
        json!({"id": "evt-1", "type": kind, "occurred_at": "2026-11-23T10:15:00.123Z",
               "user_id": "u-42", "data": {"order_id": "o-1", "amount_minor": 1999, "currency": "USD"}})
    }

    fn decode_value(value: &Value) -> Result<Event, Rejection> {
        decode(value.to_string().as_bytes(), context())
    }

    fn rejected_code(value: &Value) -> &'static str {
        match decode_value(value) {
            Ok(event) => panic!("accepted {value}: {event:?}"),
            Err(rejection) => rejection.code,
        }
    }

    #[test]
    fn accepts_the_spec_example() {
        let event = decode_value(&order("order.placed")).expect("valid");
        assert_eq!(event.kind, EventKind::OrderPlaced { amount_minor: 1999 });
        assert_eq!(event.occurred_at, NOW - 29_877);
        assert_eq!(event.user_id, "u-42");
    }

    #[test]
    fn accepts_an_offset_other_than_utc() {
        let mut value = order("order.refunded");
        value["occurred_at"] = json!("2026-11-23T11:15:00.123+01:00");
        let event = decode_value(&value).expect("valid");
        assert_eq!(event.occurred_at, NOW - 29_877);
    }

    #[test]
    fn unknown_types_are_accepted_as_other_without_data() {
        let value = json!({"id": "e", "type": "order.shipped", "occurred_at": "2026-11-23T10:15:00Z", "user_id": "u"});
        assert_eq!(decode_value(&value).expect("valid").kind, EventKind::Other);
    }

    #[test]
    fn refuses_every_malformed_case() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            (
                "no id",
                Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("id")))),
                "missing_field",
            ),
            (
                "numeric id",
                Box::new(|v| v["id"] = json!(7)),
                "invalid_field",
            ),
            (
                "empty id",
                Box::new(|v| v["id"] = json!("")),
                "invalid_field",
            ),
            (
                "long id",
                Box::new(|v| v["id"] = json!("x".repeat(129))),
                "invalid_field",
            ),
            (
                "NUL in id",
                Box::new(|v| v["id"] = json!("evt\u{0}1")),
                "invalid_field",
            ),
            (
                "NUL in user",
                Box::new(|v| v["user_id"] = json!("u\u{0}")),
                "invalid_field",
            ),
            (
                "no type",
                Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("type")))),
                "missing_field",
            ),
            (
                "no time",
                Box::new(|v| v["occurred_at"] = Value::Null),
                "missing_field",
            ),
            (
                "no offset",
                Box::new(|v| v["occurred_at"] = json!("2026-11-23T10:15:00")),
                "invalid_field",
            ),
            (
                "future",
                Box::new(|v| v["occurred_at"] = json!("2026-11-23T10:21:00Z")),
                "too_far_in_future",
            ),
            (
                "old",
                Box::new(|v| v["occurred_at"] = json!("2026-11-22T10:15:00Z")),
                "too_old",
            ),
            (
                "no user",
                Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("user_id")))),
                "missing_field",
            ),
            (
                "no data",
                Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("data")))),
                "missing_field",
            ),
            (
                "negative",
                Box::new(|v| v["data"]["amount_minor"] = json!(-1)),
                "invalid_field",
            ),
            (
                "above the ceiling",
                Box::new(|v| v["data"]["amount_minor"] = json!(MAX_AMOUNT_MINOR + 1)),
                "invalid_field",
            ),
            (
                "half of i64",
                Box::new(|v| v["data"]["amount_minor"] = json!(i64::MAX / 2)),
                "invalid_field",
            ),
            (
                "beyond i64",
                Box::new(|v| v["data"]["amount_minor"] = json!(u64::MAX)),
                "invalid_field",
            ),
            (
                "fraction",
                Box::new(|v| v["data"]["amount_minor"] = json!(19.99)),
                "invalid_field",
            ),
            (
                "string amount",
                Box::new(|v| v["data"]["amount_minor"] = json!("1999")),
                "invalid_field",
            ),
            (
                "no order id",
                Box::new(|v| drop(v["data"].as_object_mut().map(|o| o.remove("order_id")))),
                "missing_field",
            ),
            (
                "currency",
                Box::new(|v| v["data"]["currency"] = json!("EUR")),
                "wrong_currency",
            ),
        ];
        for (name, mutate, code) in cases {
            let mut value = order("order.placed");
            mutate(&mut value);
            assert_eq!(rejected_code(&value), code, "case {name}: {value}");
        }
    }

    #[test]
    fn the_ceiling_itself_is_accepted() {
        let mut value = order("order.refunded");
        value["data"]["amount_minor"] = json!(MAX_AMOUNT_MINOR);
        let event = decode_value(&value).expect("accepted");
        assert_eq!(
            event.kind,
            EventKind::OrderRefunded {
                amount_minor: MAX_AMOUNT_MINOR
            }
        );
    }

    #[test]
    fn refuses_bodies_that_are_not_json_objects() {
        let refuse = |body: &[u8]| decode(body, context()).expect_err("refused").code;
        assert_eq!(refuse(b"not json"), "not_json");
        assert_eq!(refuse(b"[1,2]"), "not_object");
        assert_eq!(refuse(&[0xff, 0xfe, b'{']), "not_utf8");
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_BODY_BYTES));
        assert_eq!(refuse(huge.as_bytes()), "too_large");
    }

    #[test]
    fn a_key_named_twice_is_refused_at_every_depth() {
        let body = |text: &str| decode(text.as_bytes(), context());
        let valid = r#"{"id": "evt-1", "type": "order.placed", "occurred_at": "2026-11-23T10:15:00Z", "user_id": "u-42", "data": {"order_id": "o-1", "amount_minor": AMOUNT, "currency": "USD"}}"#;
        assert!(body(&valid.replace("AMOUNT", "100")).is_ok());
        let cases = [
            valid.replace("AMOUNT", r#"-5, "amount_minor": 100"#),
            valid.replace(
                r#""user_id": "u-42""#,
                r#""user_id": "u-42", "user_id": "u-7""#,
            ),
            valid.replace(r#""id": "evt-1""#, r#""id": "evt-1", "id": "evt-1""#),
            valid.replace("AMOUNT", r#"100, "extra": {"a": 1, "a": 2}"#),
            valid.replace("AMOUNT", r#"100, "extra": [{"a": 1, "a": 1}]"#),
        ];
        for case in &cases {
            let rejection = body(case).expect_err(case);
            assert_eq!(rejection.code, "duplicate_key", "{case}: {rejection}");
        }
        let reason = body(&cases[0]).expect_err("refused").to_string();
        assert!(reason.contains(r#""amount_minor""#), "{reason}");
        // Equal keys in different objects are no repeat.
        let nested = valid.replace("AMOUNT", r#"100, "id": "data's own""#);
        assert!(body(&nested).is_ok());
    }

    #[test]
    fn a_leap_second_counts_in_the_minute_and_day_it_is_written_in() {
        // 2026-06-30T23:59:59.999Z
        const LAST_MILLISECOND_OF_JUNE: Millis = 1_782_863_999_999;
        let arrived = DecodeContext::new("USD", LAST_MILLISECOND_OF_JUNE + 1_000);
        for written in [
            "2026-06-30T23:59:60Z",
            "2026-06-30T23:59:60.500Z",
            "2026-07-01T01:59:60+02:00",
        ] {
            let mut value = order("order.placed");
            value["occurred_at"] = json!(written);
            let event = decode(value.to_string().as_bytes(), arrived).expect(written);
            assert_eq!(event.occurred_at, LAST_MILLISECOND_OF_JUNE, "{written}");
            let minute = chrono::DateTime::from_timestamp_millis(crate::aggregate::minute_of(
                event.occurred_at,
            ))
            .expect("minute");
            assert_eq!(
                minute.to_rfc3339(),
                "2026-06-30T23:59:00+00:00",
                "{written}"
            );
            assert_eq!(
                crate::aggregate::local_date(event.occurred_at, chrono_tz::UTC).to_string(),
                "2026-06-30",
                "{written}"
            );
        }
    }

    #[test]
    fn the_reason_names_the_field() {
        let mut value = order("order.placed");
        value["data"]["amount_minor"] = json!(-5);
        let reason = decode_value(&value).expect_err("refused").to_string();
        assert!(
            reason.starts_with("invalid_field: data.amount_minor"),
            "{reason}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// docs/api.md, Events: the documented reason codes (`sum_overflow` comes from the
        /// aggregator, not from decoding).
        const CODES: [&str; 10] = [
            "too_large",
            "not_utf8",
            "not_json",
            "duplicate_key",
            "not_object",
            "invalid_field",
            "missing_field",
            "too_far_in_future",
            "too_old",
            "wrong_currency",
        ];

        fn check(body: &[u8]) -> Result<(), TestCaseError> {
            match decode(body, context()) {
                Ok(event) => {
                    prop_assert!((1..=128).contains(&event.id.chars().count()));
                    prop_assert!((1..=128).contains(&event.user_id.chars().count()));
                }
                Err(rejection) => {
                    prop_assert!(CODES.contains(&rejection.code), "{}", rejection.code)
                }
            }
            Ok(())
        }

        fn field() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(serde_json::Value::from),
                ".{0,12}".prop_map(serde_json::Value::from),
                Just(json!("2026-11-23T10:15:00Z")),
                Just(json!("order.placed")),
                Just(json!("USD")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3_000))]
            /// Any bytes: an event, or a rejection with one of the documented reason codes.
            #[test]
            fn any_body_is_an_event_or_a_coded_rejection(body in proptest::collection::vec(any::<u8>(), 0..300)) {
                check(&body)?;
            }

            /// Bodies shaped like events, with every field of any type.
            #[test]
            fn event_shaped_bodies_are_events_or_coded_rejections(
                id in field(), kind in field(), at in field(), user in field(),
                order in field(), amount in field(), currency in field(),
            ) {
                let body = json!({"id": id, "type": kind, "occurred_at": at, "user_id": user,
                    "data": {"order_id": order, "amount_minor": amount, "currency": currency}});
                check(body.to_string().as_bytes())?;
            }
        }
    }
}
