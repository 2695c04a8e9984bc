use super::*;

const BEBOP: &str = r#"{"malId":1,"title":"Cowboy Bebop","eventType":"SCORE_UPDATE","currentScore":"8.75","popularityChange":"+0.05","timestamp":"2025-08-14T18:30:00.000Z"}"#;
const FMAB: &str = r#"{"malId":5114,"title":"Fullmetal Alchemist: Brotherhood","eventType":"MEMBER_UPDATE","liveMembers":125000,"popularityChange":"+0.8","timestamp":"2025-08-14T18:31:00.000Z"}"#;
const STEINS: &str = r#"{"malId":9253,"title":"Steins;Gate","eventType":"TRENDING_CHANGE","trendingRank":15,"popularityChange":"+2.3","timestamp":"2025-08-14T18:32:00.000Z"}"#;

fn parse(text: &str) -> Result<Event, Invalid> {
    Event::from_bytes(text.as_bytes())
}

/// The sample with one field replaced (or removed, with `None`).
fn bebop_with(field: &str, value: Option<Value>) -> String {
    let mut map: Map<String, Value> = serde_json::from_str(BEBOP).unwrap();
    match value {
        Some(v) => map.insert(field.to_owned(), v),
        None => map.remove(field),
    };
    serde_json::to_string(&map).unwrap()
}

fn reason(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn seed_samples_round_trip_byte_for_byte() {
    for sample in [BEBOP, FMAB, STEINS] {
        let event = parse(sample).unwrap();
        assert_eq!(String::from_utf8(event.to_bytes()).unwrap(), sample);
    }
}

#[test]
fn seed_samples_parse_to_their_values() {
    let bebop = parse(BEBOP).unwrap();
    assert_eq!(bebop.mal_id, 1);
    assert_eq!(
        bebop.measure,
        Measure::Score(Score::from_hundredths(875).unwrap())
    );
    assert_eq!(bebop.popularity_change, "+0.05");
    assert_eq!(parse(FMAB).unwrap().measure, Measure::Members(125_000));
    assert_eq!(parse(STEINS).unwrap().measure, Measure::Rank(15));
    assert_eq!(parse(STEINS).unwrap().event_type(), EventType::TrendingChange);
}

#[test]
fn numbers_are_accepted_where_samples_show_strings() {
    let text = bebop_with("currentScore", Some(serde_json::json!(8.75)));
    let text = {
        let mut m: Map<String, Value> = serde_json::from_str(&text).unwrap();
        m.insert("popularityChange".into(), serde_json::json!(0.05));
        serde_json::to_string(&m).unwrap()
    };
    let event = parse(&text).unwrap();
    assert_eq!(
        event.measure,
        Measure::Score(Score::from_hundredths(875).unwrap())
    );
    assert_eq!(event.popularity_change, "+0.05");
    // ...and written back in the sample form.
    assert_eq!(String::from_utf8(event.to_bytes()).unwrap(), BEBOP);
}

#[test]
fn unknown_fields_are_ignored() {
    let text = bebop_with("studio", Some(serde_json::json!({"name": "Sunrise"})));
    assert_eq!(parse(&text).unwrap(), parse(BEBOP).unwrap());
}

#[test]
fn mal_id_must_be_a_positive_whole_number() {
    for bad_id in [
        serde_json::json!(0),
        serde_json::json!(-4),
        serde_json::json!("1"),
        serde_json::json!(1.5),
        serde_json::json!(3_000_000_000i64),
    ] {
        assert!(reason(&bebop_with("malId", Some(bad_id))).contains("malId"));
    }
    assert_eq!(reason(&bebop_with("malId", None)), "missing field `malId`");
}

#[test]
fn title_must_be_1_to_300_characters() {
    assert!(reason(&bebop_with("title", Some("".into()))).contains("title"));
    assert!(reason(&bebop_with("title", Some("   ".into()))).contains("title"));
    assert!(reason(&bebop_with("title", Some("x".repeat(301).into()))).contains("title"));
    assert!(reason(&bebop_with("title", Some(7.into()))).contains("title"));
    assert!(reason(&bebop_with("title", Some("a\0b".into()))).contains("NUL"));
    // 300 multi-byte characters are fine.
    assert!(parse(&bebop_with("title", Some("進".repeat(300).into()))).is_ok());
}

#[test]
fn event_type_must_be_one_of_three() {
    let r = reason(&bebop_with("eventType", Some("VIEW_UPDATE".into())));
    assert!(r.contains("eventType") && r.contains("VIEW_UPDATE"), "{r}");
    assert_eq!(
        reason(&bebop_with("eventType", None)),
        "missing field `eventType`"
    );
}

#[test]
fn score_must_be_0_to_10_with_two_decimals() {
    for ok in ["0", "0.00", "10", "10.00", "7.5", "9.99"] {
        assert!(
            parse(&bebop_with("currentScore", Some(ok.into()))).is_ok(),
            "{ok}"
        );
    }
    for bad_score in ["10.01", "-0.5", "11", "8.755", "abc", "", "8.", ".5", "1e1"] {
        let r = reason(&bebop_with("currentScore", Some(bad_score.into())));
        assert!(r.contains("currentScore"), "{bad_score}: {r}");
    }
    assert!(reason(&bebop_with("currentScore", Some(true.into()))).contains("currentScore"));
    assert_eq!(
        reason(&bebop_with("currentScore", None)),
        "missing field `currentScore`"
    );
}

#[test]
fn members_must_be_a_whole_number_at_least_zero() {
    let fmab = |v: Value| {
        let mut m: Map<String, Value> = serde_json::from_str(FMAB).unwrap();
        m.insert("liveMembers".into(), v);
        serde_json::to_string(&m).unwrap()
    };
    assert!(parse(&fmab(0.into())).is_ok());
    assert!(reason(&fmab((-1).into())).contains("liveMembers"));
    assert!(reason(&fmab("many".into())).contains("liveMembers"));
    assert!(reason(&fmab(serde_json::json!(1.5))).contains("liveMembers"));
}

#[test]
fn trending_rank_must_be_at_least_one() {
    let steins = |v: Value| {
        let mut m: Map<String, Value> = serde_json::from_str(STEINS).unwrap();
        m.insert("trendingRank".into(), v);
        serde_json::to_string(&m).unwrap()
    };
    assert!(parse(&steins(1.into())).is_ok());
    assert!(reason(&steins(0.into())).contains("trendingRank"));
    let missing = STEINS.replace(r#""trendingRank":15,"#, "");
    assert_eq!(reason(&missing), "missing field `trendingRank`");
}

#[test]
fn popularity_change_must_be_a_signed_decimal() {
    for (input, normalised) in [("+0.05", "+0.05"), ("-1.2", "-1.2"), ("3", "+3"), ("0", "+0")] {
        let e = parse(&bebop_with("popularityChange", Some(input.into()))).unwrap();
        assert_eq!(e.popularity_change, normalised);
    }
    for bad_change in ["up", "+", "1.2.3", "++1", "1e3", "", "+1234567890123"] {
        let r = reason(&bebop_with("popularityChange", Some(bad_change.into())));
        assert!(r.contains("popularityChange"), "{bad_change}: {r}");
    }
}

#[test]
fn timestamp_must_be_rfc3339() {
    assert!(parse(&bebop_with("timestamp", Some("2025-08-14T20:30:00+02:00".into()))).is_ok());
    for bad_time in [
        "yesterday",
        "2025-08-14",
        "2025-08-14 18:30:00",
        "2025-13-01T00:00:00Z",
    ] {
        let r = reason(&bebop_with("timestamp", Some(bad_time.into())));
        assert!(r.contains("timestamp"), "{bad_time}: {r}");
    }
    assert!(reason(&bebop_with("timestamp", Some(1_755_196_200.into()))).contains("timestamp"));
}

#[test]
fn raw_value_problems_have_their_own_reasons() {
    assert_eq!(Event::from_bytes(b""), Err(Invalid::Empty));
    assert_eq!(Event::from_bytes(b"  "), Err(Invalid::Empty));
    assert_eq!(Event::from_bytes(b"{\"malId\":\xff}"), Err(Invalid::NotUtf8(9)));
    assert!(matches!(Event::from_bytes(b"{not json"), Err(Invalid::Json(_))));
    assert_eq!(Event::from_bytes(b"[1,2]"), Err(Invalid::NotObject));
    assert_eq!(Event::from_bytes(b"null"), Err(Invalid::NotObject));
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES));
    assert_eq!(
        Event::from_bytes(huge.as_bytes()),
        Err(Invalid::TooLarge(huge.len()))
    );
}

#[test]
fn null_counts_as_missing() {
    assert_eq!(
        reason(&bebop_with("title", Some(Value::Null))),
        "missing field `title`"
    );
}

#[test]
fn key_is_the_mal_id_as_text() {
    assert_eq!(parse(STEINS).unwrap().key(), b"9253");
}

#[test]
fn event_ids_come_from_the_header_or_are_absent() {
    let mut headers = std::collections::BTreeMap::new();
    assert_eq!(
        event_id(&headers),
        Ok(None),
        "records of other producers have none"
    );
    let id = new_event_id();
    headers.insert(EVENT_ID_HEADER.to_owned(), id.to_string().into_bytes());
    assert_eq!(event_id(&headers), Ok(Some(id)));
    headers.insert(EVENT_ID_HEADER.to_owned(), b"retry-7".to_vec());
    let reason = event_id(&headers).unwrap_err().to_string();
    assert!(
        reason.contains(EVENT_ID_HEADER) && reason.contains("retry-7"),
        "{reason}"
    );
    assert!(new_event_id() != new_event_id());
}
