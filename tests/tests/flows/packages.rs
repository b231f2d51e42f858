//! Payments and packages: a package is defined and bought (directly or by a payment), bookings
//! consume its lessons oldest purchase first, a cancellation gives the lesson back, the student
//! hears `package_low` once when one lesson is left.

use chrono::Duration;
use mail_parser::MimeHeaders;
use serde_json::json;

use crate::{Flow, lesson_start, parse};

async fn purchase(f: &Flow, id: i64) -> (i32, String) {
    sqlx::query_as("SELECT lessons_remaining, status FROM package_purchases WHERE id = $1")
        .bind(id)
        .fetch_one(f.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_package_is_consumed_returned_and_runs_low_once() {
    let f = Flow::start().await;
    let (student_user, student) = f.student("isla").await;
    let (_, instructor) = f.instructor("ellen").await;

    let pkg = f
        .post(
            "/api/lesson-packages",
            json!({"name": "2-lesson taster", "lessons_included": 2, "price": 9000, "validity_days": 30}),
        )
        .await
        .expect(201);
    assert_eq!(
        (pkg["lessons_included"].clone(), pkg["price"].clone(), pkg["currency"].clone()),
        (json!(2), json!(9000), json!("GBP"))
    );
    let pkg_id = pkg["id"].as_i64().unwrap();
    f.post(
        "/api/lesson-packages",
        json!({"name": "2-lesson taster", "lessons_included": 2, "price": 9000, "validity_days": 30}),
    )
    .await
    .expect_error(409, "conflict", None);
    f.post(
        "/api/lesson-packages",
        json!({"name": "Nothing", "lessons_included": 0, "price": 9000, "validity_days": 30}),
    )
    .await
    .expect_error(422, "invalid_value", Some("lessons_included"));

    // Bought by a succeeded card payment: the purchase is created and linked.
    let pay = f
        .post("/api/payments", json!({"student_id": student, "package_id": pkg_id, "amount": 9000, "currency": "GBP", "method": "card", "status": "succeeded"}))
        .await
        .expect(201);
    let purchase_id = pay["purchase_id"].as_i64().expect("a purchase");
    assert_eq!(pay["purchase"]["lessons_total"], 2);
    assert_eq!(pay["purchase"]["lessons_remaining"], 2);
    assert_eq!(pay["purchase"]["status"], "active");
    assert!(pay["paid_at"].is_string());
    let expires = chrono::DateTime::parse_from_rfc3339(pay["purchase"]["expires_at"].as_str().unwrap()).unwrap();
    let bought = chrono::DateTime::parse_from_rfc3339(pay["purchase"]["purchased_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - bought, Duration::days(30));
    let uninvoiced = f
        .count(&format!(
            "SELECT count(*) FROM payments WHERE id = {} AND status = 'succeeded' AND invoiced_at IS NULL",
            pay["id"]
        ))
        .await;
    assert_eq!(uninvoiced, 1, "waiting for the invoice job");

    // First booking: one lesson left → package_low.
    let b1 = f.book(student, instructor, lesson_start(3)).await["id"].as_i64().unwrap();
    assert_eq!(purchase(&f, purchase_id).await, (1, "active".to_owned()));
    let link: (i64, String, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT purchase_id, package_type, lessons_included, returned_at FROM booking_packages WHERE booking_id = $1")
            .bind(b1)
            .fetch_one(f.pool())
            .await
            .unwrap();
    assert_eq!((link.0, link.1.as_str(), link.2, link.3), (purchase_id, "2-lesson taster", 2, None));
    // Second: used up, and no second warning.
    let b2 = f.book(student, instructor, lesson_start(4)).await["id"].as_i64().unwrap();
    assert_eq!(purchase(&f, purchase_id).await, (0, "used_up".to_owned()));
    // Cancelling gives the lesson back.
    f.post(&format!("/api/bookings/{b2}/cancel"), json!({"reason": "holiday"}))
        .await
        .expect(200);
    assert_eq!(purchase(&f, purchase_id).await, (1, "active".to_owned()));
    let returned: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT returned_at FROM booking_packages WHERE booking_id = $1")
            .bind(b2)
            .fetch_one(f.pool())
            .await
            .unwrap();
    assert!(returned.is_some());
    // Booked again: used up again; one lesson left once more, but the warning is not repeated.
    let b3 = f.book(student, instructor, lesson_start(5)).await["id"].as_i64().unwrap();
    assert_eq!(purchase(&f, purchase_id).await, (0, "used_up".to_owned()));
    f.post(&format!("/api/bookings/{b1}/cancel"), json!({})).await.expect(200);
    assert_eq!(purchase(&f, purchase_id).await, (1, "active".to_owned()));
    // With the package used up again nothing is consumed: the lesson is paid otherwise.
    let b4 = f.book(student, instructor, lesson_start(6)).await["id"].as_i64().unwrap();
    let b5 = f.book(student, instructor, lesson_start(7)).await["id"].as_i64().unwrap();
    assert_eq!(purchase(&f, purchase_id).await, (0, "used_up".to_owned()));
    assert_eq!(
        f.count(&format!("SELECT count(*) FROM booking_packages WHERE booking_id = {b5}"))
            .await,
        0
    );
    assert_eq!(
        f.count(&format!(
            "SELECT count(*) FROM booking_packages WHERE booking_id IN ({b3}, {b4}) AND returned_at IS NULL"
        ))
        .await,
        2
    );

    assert_eq!(
        f.count("SELECT count(*) FROM notifications WHERE type = 'package_low'").await,
        1,
        "once per purchase"
    );
    let warning = dashlight_tests::wait::try_wait_until("the package_low email", crate::LONG, || async {
        Ok(f.mails_to("isla@school.test")
            .into_iter()
            .find(|m| parse(m).subject().is_some_and(|s| s.contains("left in your"))))
    })
    .await
    .unwrap();
    let msg = parse(&warning);
    assert_eq!(msg.subject().unwrap(), "1 lesson left in your 2-lesson taster");
    assert!(msg.body_text(0).unwrap().contains("1 lesson left in your 2-lesson taster"));
    assert!(msg.content_type().is_some());
    f.settle(chrono::Utc::now()).await;
    let warnings = f
        .mails_to("isla@school.test")
        .into_iter()
        .filter(|m| parse(m).subject().is_some_and(|s| s.contains("left in your")))
        .count();
    assert_eq!(warnings, 1);

    // Analytics: the payment; the purchase.
    let paid = f.events("payment_succeeded").await;
    assert_eq!(paid.len(), 1);
    assert_eq!(
        (paid[0]["amount_minor"].clone(), paid[0]["purchase_id"].clone()),
        (json!(9000), json!(purchase_id))
    );
    let bought = f.events("package_purchased").await;
    assert_eq!(bought.len(), 1);
    let user: Option<i64> = sqlx::query_scalar("SELECT user_id FROM analytics_events WHERE event_type = 'payment_succeeded'")
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(user, Some(student_user));
    f.stop().await;
}

#[tokio::test]
async fn the_oldest_unexpired_purchase_is_used_first_and_payments_are_checked() {
    let f = Flow::start().await;
    let (_, student) = f.student("leo").await;
    let (_, other) = f.student("maya").await;
    let (_, instructor) = f.instructor("kim").await;
    let small = f
        .post(
            "/api/lesson-packages",
            json!({"name": "Five", "lessons_included": 5, "price": 20000, "validity_days": 90}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let big = f
        .post(
            "/api/lesson-packages",
            json!({"name": "Ten", "lessons_included": 10, "price": 38000, "currency": "EUR", "validity_days": 180}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();

    // Bought directly (the payment may come later).
    let expired = f
        .post(&format!("/api/students/{student}/packages"), json!({"package_id": small}))
        .await
        .expect(201);
    let older = f
        .post(&format!("/api/students/{student}/packages"), json!({"package_id": small}))
        .await
        .expect(201);
    let newer = f
        .post(&format!("/api/students/{student}/packages"), json!({"package_id": big}))
        .await
        .expect(201);
    assert_eq!(newer["lessons_remaining"], 10);
    assert_eq!(newer["package_name"], "Ten");
    sqlx::query("UPDATE package_purchases SET expires_at = now() - interval '1 day' WHERE id = $1")
        .bind(expired["id"].as_i64())
        .execute(f.pool())
        .await
        .unwrap();
    f.post("/api/students/999999/packages", json!({"package_id": small}))
        .await
        .expect_error(404, "not_found", None);
    f.post(&format!("/api/students/{student}/packages"), json!({"package_id": 999999}))
        .await
        .expect_error(422, "invalid_value", Some("package_id"));

    let b = f.book(student, instructor, lesson_start(3)).await["id"].as_i64().unwrap();
    let used: i64 = sqlx::query_scalar("SELECT purchase_id FROM booking_packages WHERE booking_id = $1")
        .bind(b)
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(used, older["id"].as_i64().unwrap(), "the oldest purchase that has not expired");
    // Another student's booking touches none of them.
    let ob = f.book(other, instructor, lesson_start(4)).await["id"].as_i64().unwrap();
    assert_eq!(
        f.count(&format!("SELECT count(*) FROM booking_packages WHERE booking_id = {ob}"))
            .await,
        0
    );

    // Payments: values are checked and name the field; a failed payment buys nothing.
    let base = json!({"student_id": student, "amount": 4500, "currency": "GBP", "method": "card", "status": "succeeded"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    f.post("/api/payments", with("amount", json!(0)))
        .await
        .expect_error(422, "invalid_value", Some("amount"));
    f.post("/api/payments", with("currency", json!("gbp")))
        .await
        .expect_error(422, "invalid_value", Some("currency"));
    f.post("/api/payments", with("method", json!("cheque")))
        .await
        .expect_error(422, "invalid_value", Some("method"));
    f.post("/api/payments", with("status", json!("done")))
        .await
        .expect_error(422, "invalid_value", Some("status"));
    f.post("/api/payments", with("student_id", json!(999999)))
        .await
        .expect_error(422, "invalid_value", Some("student_id"));
    f.post("/api/payments", with("booking_id", json!(ob)))
        .await
        .expect_error(422, "invalid_value", Some("booking_id"));
    f.post("/api/payments", with("amount", json!("45.00")))
        .await
        .expect_error(422, "invalid_type", Some("amount"));
    let paid = f.post("/api/payments", with("booking_id", json!(b))).await.expect(201);
    assert_eq!(
        (paid["booking_id"].clone(), paid["purchase_id"].clone(), paid["amount"].clone()),
        (json!(b), json!(null), json!(4500))
    );
    let mut failed = with("status", json!("failed"));
    failed["package_id"] = json!(big);
    let failed = f.post("/api/payments", failed).await.expect(201);
    assert_eq!(failed["purchase_id"], json!(null), "a failed payment buys nothing");
    assert!(failed["paid_at"].is_null());
    assert_eq!(f.count("SELECT count(*) FROM package_purchases").await, 3);
    assert_eq!(f.events("payment_succeeded").await.len(), 1);
    assert_eq!(f.events("payment_failed").await.len(), 1);
    assert_eq!(f.events("package_purchased").await.len(), 3);
    f.stop().await;
}
