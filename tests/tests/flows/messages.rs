//! Messages on an injected clock: every other participant gets a push at once; the email follows
//! only when the message is still unread 15 minutes later — read in time, none is sent.

use std::time::Duration;

use chrono::Utc;
use dashlight_core::Clock;
use serde_json::json;

use crate::{Flow, parse};

#[tokio::test]
async fn a_message_read_within_15_minutes_sends_no_email_an_unread_one_does() {
    let t0 = Utc::now();
    let (clock, hand) = Clock::manual(t0);
    let f = Flow::start_with(clock).await;
    let (teacher, _) = f.instructor("nina").await;
    let (reader, _) = f.student("rosa").await;
    let (idler, _) = f.student("ugo").await;
    let sub = f.w.push.subscribe("rosa-phone");
    f.post(
        &format!("/api/users/{reader}/devices"),
        json!({"device_id": "rosa-phone", "push_endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth}),
    )
    .await
    .expect(201);

    let sent = f
        .post("/api/messages", json!({"sender_id": teacher, "participant_ids": [reader, idler, teacher], "content": "Hi both, lessons start 10 minutes earlier on Thursday."}))
        .await
        .expect(201);
    let message = sent["id"].as_i64().unwrap();
    let thread = sent["thread_id"].as_str().unwrap().to_owned();
    let mut participants: Vec<(i64, bool)> = sent["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["user_id"].as_i64().unwrap(), p["is_read"].as_bool().unwrap()))
        .collect();
    participants.sort();
    let mut want = vec![(teacher, true), (reader, false), (idler, false)];
    want.sort();
    assert_eq!(participants, want, "the sender has read it, nobody else has");

    // At once: a push to the reader's phone; the idler has no device, so nothing yet.
    let pushes = f.w.push.wait_for(1, crate::LONG).await.unwrap();
    assert!(f.w.push.rejected().is_empty(), "{:?}", f.w.push.rejected());
    let payload: serde_json::Value = serde_json::from_slice(&pushes[0].payload).unwrap();
    assert_eq!(payload["title"], "nina Teacher");
    assert!(payload["body"].as_str().unwrap().contains("10 minutes earlier"));
    f.settle(t0).await;
    let skipped: String = sqlx::query_scalar(
        "SELECT d.skip_reason FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id WHERE n.user_id = $1 AND n.dedupe_key LIKE 'new_message:%'",
    )
    .bind(idler)
    .fetch_one(f.pool())
    .await
    .unwrap();
    assert_eq!(skipped, "no active push device");
    assert!(f.w.smtp.messages().is_empty(), "no email before 15 minutes");
    let channels: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT dedupe_key, channels FROM notifications WHERE type = 'new_message' AND user_id = $1 ORDER BY id")
            .bind(reader)
            .fetch_all(f.pool())
            .await
            .unwrap();
    assert_eq!(
        channels,
        vec![
            (format!("new_message:{message}:{reader}"), vec!["push".to_owned()]),
            (format!("new_message_email:{message}:{reader}"), vec!["email".to_owned()])
        ]
    );

    // Five minutes later the reader reads it: their email is called off.
    hand.advance(chrono::Duration::minutes(5));
    let read = f
        .post(&format!("/api/messages/{message}/read"), json!({"user_id": reader}))
        .await
        .expect(200);
    assert_eq!(read["email_cancelled"], true);
    let again = f
        .post(&format!("/api/messages/{message}/read"), json!({"user_id": reader}))
        .await
        .expect(200);
    assert_eq!(again["email_cancelled"], false, "reading twice changes nothing");
    assert_eq!(again["read_at"], read["read_at"]);
    f.post(&format!("/api/messages/{message}/read"), json!({"user_id": 999999}))
        .await
        .expect_error(422, "invalid_value", Some("user_id"));
    f.post("/api/messages/999999/read", json!({"user_id": reader}))
        .await
        .expect_error(404, "not_found", None);

    // Sixteen minutes: the sweep finds the idler's email due, and it goes out; the reader's never.
    hand.advance(chrono::Duration::minutes(11));
    let now = t0 + chrono::Duration::minutes(16);
    dashlight_worker::delivery::sweep_overdue(f.pool(), now, Duration::from_secs(5))
        .await
        .unwrap();
    let mails = f.wait_for_mails("ugo@school.test", 1).await;
    let msg = parse(&mails[0]);
    assert_eq!(msg.subject().unwrap(), "New message from nina Teacher");
    assert!(msg.body_text(0).unwrap().contains("10 minutes earlier"));
    f.settle(now).await;
    assert!(f.mails_to("rosa@school.test").is_empty(), "read in time: no email");
    let (status, deliveries): (String, i64) = sqlx::query_as(
        "SELECT n.status, (SELECT count(*) FROM notification_deliveries d WHERE d.notification_id = n.id) FROM notifications n WHERE n.dedupe_key = $1",
    )
    .bind(format!("new_message_email:{message}:{reader}"))
    .fetch_one(f.pool())
    .await
    .unwrap();
    assert_eq!((status.as_str(), deliveries), ("cancelled", 0));
    assert_eq!(f.w.smtp.messages().len(), 1);

    // Threads: unread counts per person; a reply in the same thread.
    let threads = |user: i64| {
        let f = &f;
        async move { f.get(&format!("/api/users/{user}/messages")).await.expect(200) }
    };
    let t = threads(reader).await;
    assert_eq!(t["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            t["items"][0]["thread_id"].as_str().unwrap(),
            t["items"][0]["unread"].as_i64().unwrap()
        ),
        (thread.as_str(), 0)
    );
    assert_eq!(threads(idler).await["items"][0]["unread"], 1);
    let reply = f
        .post(
            "/api/messages",
            json!({"sender_id": idler, "participant_ids": [teacher], "thread_id": thread, "content": "Fine by me!"}),
        )
        .await
        .expect(201);
    assert_eq!(reply["thread_id"], thread);
    let t = threads(teacher).await;
    let item = &t["items"][0];
    assert_eq!((item["messages"].as_i64(), item["unread"].as_i64()), (Some(2), Some(1)));
    assert_eq!(item["last_message"]["content"], "Fine by me!");
    assert_eq!(item["last_message"]["sender_name"], "ugo Learner");
    let mut everyone: Vec<i64> = vec![teacher, reader, idler];
    everyone.sort();
    assert_eq!(item["participant_ids"], json!(everyone));
    assert_eq!(threads(idler).await["items"][0]["unread"], 1, "their own reply is read");
    let other = f
        .post(
            "/api/messages",
            json!({"sender_id": teacher, "participant_ids": [reader], "content": "Separate thread"}),
        )
        .await
        .expect(201);
    assert_ne!(other["thread_id"], thread);
    let page = f.get(&format!("/api/users/{reader}/messages?limit=1")).await.expect(200);
    assert_eq!(page["items"][0]["thread_id"], other["thread_id"], "newest first");
    let next = page["next_cursor"].as_str().expect("a second page").to_owned();
    let page2 = f
        .get(&format!("/api/users/{reader}/messages?limit=1&cursor={next}"))
        .await
        .expect(200);
    assert_eq!(page2["items"][0]["thread_id"], thread);
    assert!(page2["next_cursor"].is_null());
    f.get("/api/users/999999/messages").await.expect_error(404, "not_found", None);

    // Refusals name the field.
    f.post(
        "/api/messages",
        json!({"sender_id": teacher, "participant_ids": [teacher], "content": "me"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("participant_ids"));
    f.post(
        "/api/messages",
        json!({"sender_id": teacher, "participant_ids": [reader, 999999], "content": "x"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("participant_ids[1]"));
    f.post(
        "/api/messages",
        json!({"sender_id": 999999, "participant_ids": [reader], "content": "x"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("sender_id"));
    f.post(
        "/api/messages",
        json!({"sender_id": teacher, "participant_ids": [reader], "content": ""}),
    )
    .await
    .expect_error(422, "invalid_value", Some("content"));
    f.post(
        "/api/messages",
        json!({"sender_id": teacher, "participant_ids": [reader], "thread_id": "nope", "content": "x"}),
    )
    .await
    .expect_error(422, "invalid_value", Some("thread_id"));

    let events = f.events("message_sent").await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        (events[0]["message_id"].as_i64(), events[0]["recipients"].as_i64()),
        (Some(message), Some(2))
    );
    f.stop().await;
}
