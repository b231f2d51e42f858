//! Calendar: the booking emails carry an iCalendar invitation (a `text/calendar` alternative and
//! an `invite.ics` attachment) with a stable UID — `METHOD:REQUEST` on booking, `SEQUENCE` + 1 on
//! a move, `METHOD:CANCEL` on cancellation; each person's feed lists exactly their live lessons
//! and stops working when its token is rotated.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use mail_parser::{Message, MimeHeaders};
use serde_json::{Value, json};

use crate::{Flow, ics, lesson_start, parse};

/// The `text/calendar` alternative (with its `method=` parameter) and the `invite.ics`
/// attachment of an email.
fn calendar_parts(msg: &Message<'_>) -> (String, String, Vec<u8>) {
    let mut alternative = None;
    let mut attachment = None;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else { continue };
        if ct.ctype() == "text" && ct.subtype() == Some("calendar") {
            alternative = Some((
                ct.attribute("method").unwrap_or_default().to_owned(),
                part.text_contents().expect("text").to_owned(),
            ));
        } else if part.attachment_name() == Some("invite.ics") {
            attachment = Some(part.contents().to_vec());
        }
    }
    let (method, text) = alternative.expect("a text/calendar part");
    (method, text, attachment.expect("an invite.ics attachment"))
}

/// Checks an invitation and returns its one VEVENT.
fn invitation(raw: &str, method: &str) -> ics::Component {
    let cal = ics::parse(raw).unwrap_or_else(|e| panic!("not RFC 5545: {e}\n{raw}"));
    assert_eq!(cal.value("METHOD"), Some(method));
    let events = cal.children("VEVENT");
    assert_eq!(events.len(), 1, "one VEVENT");
    events[0].clone()
}

#[tokio::test]
async fn booking_emails_carry_an_invitation_that_moves_and_cancels() {
    let f = Flow::start().await;
    let (_, student) = f.student("zoe").await;
    let (_, instructor) = f.instructor("ivan").await;
    let start = lesson_start(3);
    let pickup = "Flat 3, 14 Otley Road; Headingley, Leeds LS6 2AA \\ by the blue door next to the bakery";
    let b = f
        .post(
            "/api/bookings",
            json!({"student_id": student, "instructor_id": instructor, "start_time": start.to_rfc3339(), "end_time": (start + Duration::hours(1)).to_rfc3339(), "pickup_location": pickup}),
        )
        .await
        .expect(201);
    let id = b["id"].as_i64().unwrap();
    let uid = format!("booking-{id}@dashlight");

    // Booked: METHOD:REQUEST, SEQUENCE 0, the times in UTC, organizer and attendee.
    let mails = f.wait_for_mails("zoe@school.test", 1).await;
    let msg = parse(&mails[0]);
    assert!(msg.subject().unwrap().starts_with("Lesson booked"), "{:?}", msg.subject());
    let (method, text, attached) = calendar_parts(&msg);
    assert_eq!(method, "REQUEST");
    let ev = invitation(&text, "REQUEST");
    assert_eq!(String::from_utf8(attached).unwrap(), text, "the attachment is the same object");
    assert_eq!(ev.value("UID"), Some(uid.as_str()));
    assert_eq!(ev.value("SEQUENCE"), Some("0"));
    assert_eq!(ics::utc(ev.value("DTSTART").unwrap()), start);
    assert_eq!(ics::utc(ev.value("DTEND").unwrap()), start + Duration::hours(1));
    let stamp = ics::utc(ev.value("DTSTAMP").unwrap());
    assert!((Utc::now() - stamp).num_minutes().abs() < 5, "DTSTAMP {stamp}");
    assert_eq!(ics::text(ev.value("LOCATION").unwrap()), pickup);
    assert_eq!(
        ics::text(ev.value("SUMMARY").unwrap()),
        "Driving lesson: zoe Learner with ivan Teacher"
    );
    assert_eq!(ev.value("STATUS"), Some("CONFIRMED"));
    let organizer = ev.prop("ORGANIZER").expect("ORGANIZER");
    assert_eq!(
        (organizer.value.as_str(), organizer.param("CN")),
        ("mailto:no-reply@localhost", Some("Dashlight"))
    );
    let attendees = ev.all("ATTENDEE");
    assert_eq!(attendees.len(), 1);
    assert_eq!(
        (attendees[0].value.as_str(), attendees[0].param("CN")),
        ("mailto:zoe@school.test", Some("zoe Learner"))
    );

    // Moved: same UID, SEQUENCE + 1, the new times.
    let moved = start + Duration::days(1) + Duration::hours(2);
    f.post(
        &format!("/api/bookings/{id}/reschedule"),
        json!({"start_time": moved.to_rfc3339(), "end_time": (moved + Duration::minutes(90)).to_rfc3339()}),
    )
    .await
    .expect(200);
    let mails = f.wait_for_mails("zoe@school.test", 2).await;
    let msg = parse(&mails[1]);
    assert!(msg.subject().unwrap().starts_with("Lesson moved"), "{:?}", msg.subject());
    let (method, text, _) = calendar_parts(&msg);
    assert_eq!(method, "REQUEST");
    let ev = invitation(&text, "REQUEST");
    assert_eq!(ev.value("UID"), Some(uid.as_str()));
    assert_eq!(ev.value("SEQUENCE"), Some("1"));
    assert_eq!(ics::utc(ev.value("DTSTART").unwrap()), moved);
    assert_eq!(ics::utc(ev.value("DTEND").unwrap()), moved + Duration::minutes(90));

    // Cancelled: METHOD:CANCEL, same UID, SEQUENCE raised again.
    f.post(&format!("/api/bookings/{id}/cancel"), json!({"reason": "car in the garage"}))
        .await
        .expect(200);
    let mails = f.wait_for_mails("zoe@school.test", 3).await;
    let msg = parse(&mails[2]);
    assert!(msg.subject().unwrap().starts_with("Lesson cancelled"), "{:?}", msg.subject());
    let (method, text, _) = calendar_parts(&msg);
    assert_eq!(method, "CANCEL");
    let ev = invitation(&text, "CANCEL");
    assert_eq!(ev.value("UID"), Some(uid.as_str()));
    assert_eq!(ev.value("SEQUENCE"), Some("2"));
    assert_eq!(ev.value("STATUS"), Some("CANCELLED"));
    assert_eq!(ics::utc(ev.value("DTSTART").unwrap()), moved);
    assert!(ev.prop("ORGANIZER").is_some());

    // The stored objects are byte-exact RFC 5545 too (CRLF, folded at 75 octets).
    let stored: Vec<(String, Value)> =
        sqlx::query_as("SELECT type, data->'calendar' FROM notifications WHERE booking_id = $1 AND data ? 'calendar' ORDER BY id")
            .bind(id)
            .fetch_all(f.pool())
            .await
            .unwrap();
    let kinds: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["booking_confirmed", "booking_rescheduled", "booking_cancelled"]);
    for (kind, cal) in &stored {
        let raw = cal["ics"].as_str().unwrap();
        ics::parse(raw).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(raw.split("\r\n").any(|l| l.starts_with(' ')), "{kind}: the long lines are folded");
    }
    f.stop().await;
}

async fn feed_uids(f: &Flow, token: &str) -> (BTreeSet<String>, ics::Component) {
    let r = f.get_open(&format!("/calendar/{token}.ics")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.content_type, "text/calendar; charset=utf-8");
    let cal = ics::parse(&r.text).unwrap_or_else(|e| panic!("not RFC 5545: {e}\n{}", r.text));
    assert!(cal.prop("METHOD").is_none(), "a feed has no METHOD");
    let uids = cal.children("VEVENT").iter().map(|e| e.value("UID").unwrap().to_owned()).collect();
    (uids, cal)
}

fn uids(ids: &[i64]) -> BTreeSet<String> {
    ids.iter().map(|id| format!("booking-{id}@dashlight")).collect()
}

async fn token_of(f: &Flow, user_id: i64) -> String {
    sqlx::query_scalar("SELECT calendar_token FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(f.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_feed_lists_exactly_the_persons_live_lessons_and_rotates() {
    let f = Flow::start().await;
    let (ann_user, ann) = f.student("ann").await;
    let (ben_user, ben) = f.student("ben").await;
    let (ian_user, ian) = f.instructor("ian").await;
    let id = |v: Value| v["id"].as_i64().unwrap();
    let confirmed = id(f.book(ann, ian, lesson_start(3)).await);
    let cancelled = id(f.book(ann, ian, lesson_start(4)).await);
    f.post(&format!("/api/bookings/{cancelled}/cancel"), json!({})).await.expect(200);
    let bens = id(f.book(ben, ian, lesson_start(5)).await);
    let completed = id(f.book(ann, ian, lesson_start(6)).await);
    f.post(&format!("/api/bookings/{completed}/complete"), json!({"skills": []}))
        .await
        .expect(200);
    let no_show = id(f.book(ann, ian, lesson_start(7)).await);
    f.post(&format!("/api/bookings/{no_show}/no-show"), json!({})).await.expect(200);
    let moved = id(f.book(ann, ian, lesson_start(8)).await);
    let moved_to: DateTime<Utc> = lesson_start(9);
    f.post(
        &format!("/api/bookings/{moved}/reschedule"),
        json!({"start_time": moved_to.to_rfc3339(), "end_time": (moved_to + Duration::hours(1)).to_rfc3339()}),
    )
    .await
    .expect(200);

    let ann_token = token_of(&f, ann_user).await;
    let (got, cal) = feed_uids(&f, &ann_token).await;
    assert_eq!(got, uids(&[confirmed, completed, moved]), "confirmed and completed lessons only");
    assert!(cal.value("X-WR-CALNAME").is_some_and(|n| n.contains("ann")));
    let ev = cal
        .children("VEVENT")
        .into_iter()
        .find(|e| e.value("UID") == Some(&format!("booking-{moved}@dashlight")))
        .unwrap()
        .clone();
    assert_eq!(ics::utc(ev.value("DTSTART").unwrap()), moved_to);
    assert_eq!(ev.value("SEQUENCE"), Some("1"));
    assert_eq!(ev.value("STATUS"), Some("CONFIRMED"));
    let (got, _) = feed_uids(&f, &token_of(&f, ian_user).await).await;
    assert_eq!(got, uids(&[confirmed, bens, completed, moved]), "the instructor's diary");
    let (got, _) = feed_uids(&f, &token_of(&f, ben_user).await).await;
    assert_eq!(got, uids(&[bens]));

    // Rotation: the old address is gone at once, the new one serves the same lessons.
    let rotated = f
        .post(&format!("/api/users/{ann_user}/calendar-token/rotate"), json!({}))
        .await
        .expect(200);
    let new_token = rotated["calendar_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, ann_token);
    assert_eq!(rotated["feed_path"], format!("/calendar/{new_token}.ics"));
    f.get_open(&format!("/calendar/{ann_token}.ics"))
        .await
        .expect_error(404, "not_found", None);
    let (got, _) = feed_uids(&f, &new_token).await;
    assert_eq!(got, uids(&[confirmed, completed, moved]));
    f.get_open("/calendar/not-a-token.ics").await.expect_error(404, "not_found", None);
    f.get_open(&format!("/calendar/{new_token}"))
        .await
        .expect_error(404, "not_found", None);
    f.post("/api/users/999999/calendar-token/rotate", json!({}))
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(f.events("calendar_token_rotated").await.len(), 1);
    f.stop().await;
}
