//! People: users with their profile and preferences, preferences, devices, availability.

use serde_json::json;

use crate::{AUTH, Api, P256DH};

#[tokio::test]
async fn create_users_with_profiles_in_one_go() {
    let api = Api::start().await;
    let (iuser, instructor) = api.instructor("priya").await;
    let b = api
        .post(
            "/api/users",
            json!({"role": "student", "email": "Amelia@School.test", "phone": "+447700900201", "first_name": "Amelia", "last_name": "Hart",
                   "timezone": "America/New_York", "student": {"license_type": "B", "current_instructor_id": instructor, "test_dates": ["2030-05-01T09:00:00+01:00"]}}),
        )
        .await
        .expect(201);
    let uid = b["id"].as_i64().unwrap();
    assert_eq!(b["role"], "student");
    assert!(b["student_id"].is_i64());
    assert!(b["instructor_id"].is_null());
    let (tz, current, prefs): (String, Option<i64>, i64) = sqlx::query_as(
        "SELECT u.timezone, s.current_instructor_id, (SELECT count(*) FROM user_preferences p WHERE p.user_id = u.id)
         FROM users u JOIN students s ON s.user_id = u.id WHERE u.id = $1",
    )
    .bind(uid)
    .fetch_one(api.pool())
    .await
    .unwrap();
    assert_eq!((tz.as_str(), current, prefs), ("America/New_York", Some(instructor), 1));
    assert_eq!(
        api.count(&format!("SELECT count(*) FROM instructors WHERE user_id = {iuser}"))
            .await,
        1
    );

    // Without a time zone: the school's.
    let b = api
        .post(
            "/api/users",
            json!({"role": "student", "email": "noah@school.test", "first_name": "Noah", "last_name": "B"}),
        )
        .await
        .expect(201);
    let tz: String = sqlx::query_scalar("SELECT timezone FROM users WHERE id = $1")
        .bind(b["id"].as_i64().unwrap())
        .fetch_one(api.pool())
        .await
        .unwrap();
    assert_eq!(tz, "Europe/London");

    // The same address in another case, the same licence number: conflicts.
    api.post(
        "/api/users",
        json!({"role": "student", "email": "amelia@school.TEST", "first_name": "A", "last_name": "H"}),
    )
    .await
    .expect_error(409, "conflict", None);
    api.post("/api/users", json!({"role": "instructor", "email": "t@school.test", "first_name": "T", "last_name": "O", "instructor": {"license_number": "ADI-priya"}}))
        .await
        .expect_error(409, "conflict", None);
    api.stop().await;
}

#[tokio::test]
async fn user_values_are_validated() {
    let api = Api::start().await;
    let base = json!({"role": "student", "email": "v@school.test", "phone": "+447700900201", "first_name": "V", "last_name": "W", "timezone": "Europe/London"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    api.post("/api/users", with("timezone", json!("Mars/Olympus_Mons")))
        .await
        .expect_error(422, "invalid_value", Some("timezone"));
    api.post("/api/users", with("timezone", json!("GMT+1")))
        .await
        .expect_error(422, "invalid_value", Some("timezone"));
    api.post("/api/users", with("phone", json!("07700 900201")))
        .await
        .expect_error(422, "invalid_value", Some("phone"));
    api.post("/api/users", with("phone", json!("+0447700900201")))
        .await
        .expect_error(422, "invalid_value", Some("phone"));
    api.post("/api/users", with("email", json!("not-an-email")))
        .await
        .expect_error(422, "invalid_value", Some("email"));
    api.post("/api/users", with("role", json!("admin")))
        .await
        .expect_error(422, "invalid_value", Some("role"));
    api.post("/api/users", with("first_name", json!("")))
        .await
        .expect_error(422, "invalid_value", Some("first_name"));
    api.post("/api/users", with("role", json!("instructor")))
        .await
        .expect_error(422, "invalid_value", Some("instructor"));
    api.post("/api/users", with("student", json!({"current_instructor_id": 424242})))
        .await
        .expect_error(422, "invalid_value", Some("student.current_instructor_id"));
    api.post("/api/users", with("student", json!({"test_dates": ["2030-05-01 09:00"]})))
        .await
        .expect_error(422, "invalid_value", Some("student.test_dates"));
    assert_eq!(api.count("SELECT count(*) FROM users").await, 0, "nothing half-created");
    api.post("/api/users", base).await.expect(201);
    api.stop().await;
}

#[tokio::test]
async fn preferences_are_replaced() {
    let api = Api::start().await;
    let (uid, _) = api.student("prefs").await;
    let b = api
        .put(&format!("/api/users/{uid}/preferences"), json!({"email_notifications": true, "sms_notifications": false, "push_notifications": true, "quiet_hours": {"start": "22:00", "end": "07:00"}}))
        .await
        .expect(200);
    assert_eq!(
        b,
        json!({"user_id": uid, "email_notifications": true, "sms_notifications": false, "push_notifications": true, "quiet_hours": {"start": "22:00", "end": "07:00"}, "email_opt_outs": []})
    );
    let b = api
        .put(
            &format!("/api/users/{uid}/preferences"),
            json!({"email_notifications": false, "sms_notifications": true, "push_notifications": false, "quiet_hours": null}),
        )
        .await
        .expect(200);
    assert!(b["quiet_hours"].is_null());
    let row: (bool, bool, bool, Option<chrono::NaiveTime>) = sqlx::query_as(
        "SELECT email_notifications, sms_notifications, push_notifications, quiet_hours_start FROM user_preferences WHERE user_id = $1",
    )
    .bind(uid)
    .fetch_one(api.pool())
    .await
    .unwrap();
    assert_eq!(row, (false, true, false, None));

    let path = format!("/api/users/{uid}/preferences");
    api.put(&path, json!({"email_notifications": true, "sms_notifications": true, "push_notifications": true, "quiet_hours": {"start": "22:00", "end": "22:00"}}))
        .await
        .expect_error(422, "invalid_value", Some("quiet_hours.end"));
    api.put(&path, json!({"email_notifications": true, "sms_notifications": true, "push_notifications": true, "quiet_hours": {"start": "10pm", "end": "07:00"}}))
        .await
        .expect_error(422, "invalid_value", Some("quiet_hours.start"));
    api.put(&path, json!({"email_notifications": true, "sms_notifications": true}))
        .await
        .expect_error(422, "missing_field", Some("push_notifications"));
    api.put(
        "/api/users/987654/preferences",
        json!({"email_notifications": true, "sms_notifications": true, "push_notifications": true}),
    )
    .await
    .expect_error(404, "not_found", None);
    api.stop().await;
}

#[tokio::test]
async fn devices_are_checked_and_registered() {
    let api = Api::start().await;
    let (uid, _) = api.student("devices").await;
    let path = format!("/api/users/{uid}/devices");
    let device =
        |p256dh: &str, auth: &str, endpoint: &str| json!({"device_id": "phone", "push_endpoint": endpoint, "p256dh": p256dh, "auth": auth});

    let b = api
        .post(&path, device(P256DH, AUTH, "https://push.example.test/sub/1"))
        .await
        .expect(201);
    assert_eq!(b["device_id"], "phone");
    assert_eq!(b["active"], true);
    assert!(b.get("auth").is_none(), "keys are not echoed");
    // The same device again (a renewed subscription, padded keys): updated, not duplicated.
    sqlx::query("UPDATE user_devices SET active = false, disabled_reason = 'gone' WHERE user_id = $1")
        .bind(uid)
        .execute(api.pool())
        .await
        .unwrap();
    let again = api
        .post(
            &path,
            device(&format!("{P256DH}="), &format!("{AUTH}=="), "https://push.example.test/sub/2"),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], b["id"]);
    assert_eq!(again["active"], true);
    let (n, endpoint, p256dh): (i64, String, String) =
        sqlx::query_as("SELECT count(*) OVER (), push_endpoint, p256dh FROM user_devices WHERE user_id = $1")
            .bind(uid)
            .fetch_one(api.pool())
            .await
            .unwrap();
    assert_eq!(
        (n, endpoint.as_str(), p256dh.as_str()),
        (1, "https://push.example.test/sub/2", P256DH)
    );

    // A key that is not a point on the curve, the wrong length, not base64url; a short secret.
    let mut raw = base64_decode(P256DH);
    raw[64] ^= 0x01;
    api.post(&path, device(&base64_encode(&raw), AUTH, "https://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("p256dh"));
    api.post(&path, device(&base64_encode(&raw[..33]), AUTH, "https://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("p256dh"));
    let mut compressed_tag = base64_decode(P256DH);
    compressed_tag[0] = 0x05;
    api.post(&path, device(&base64_encode(&compressed_tag), AUTH, "https://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("p256dh"));
    api.post(&path, device("not base64!", AUTH, "https://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("p256dh"));
    api.post(&path, device(P256DH, "c2hvcnQ", "https://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("auth"));
    api.post(&path, device(P256DH, AUTH, "ftp://p.test/x"))
        .await
        .expect_error(422, "invalid_value", Some("push_endpoint"));
    api.post(&path, device(P256DH, AUTH, "not a url"))
        .await
        .expect_error(422, "invalid_value", Some("push_endpoint"));
    api.post("/api/users/999999/devices", device(P256DH, AUTH, "https://p.test/x"))
        .await
        .expect_error(404, "not_found", None);
    api.stop().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn availability_is_replaced_and_enforced() {
    let api = Api::start().await;
    let (_, instructor) = api.instructor("avail").await;
    let (_, student) = api.student("avail-student").await;
    let path = format!("/api/instructors/{instructor}/availability");
    let b = api
        .put(&path, json!([{"day_of_week": 3, "start_time": "13:00", "end_time": "17:00"}, {"day_of_week": 1, "start_time": "08:00", "end_time": "12:30"}]))
        .await
        .expect(200);
    assert_eq!(b["instructor_id"], instructor);
    assert_eq!(
        b["windows"],
        json!([{"day_of_week": 1, "start_time": "08:00", "end_time": "12:30"}, {"day_of_week": 3, "start_time": "13:00", "end_time": "17:00"}])
    );
    let b = api
        .put(&path, json!([{"day_of_week": 7, "start_time": "09:00", "end_time": "10:00"}]))
        .await
        .expect(200);
    assert_eq!(b["windows"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM instructor_availability WHERE instructor_id = {instructor}"
        ))
        .await,
        1,
        "replaced, not added"
    );

    // Bookings are checked against it: Sunday 09:00-10:00 London only.
    let sunday = next_weekday_at(chrono::Weekday::Sun, 9);
    api.book(student, instructor, sunday).await;
    let monday = next_weekday_at(chrono::Weekday::Mon, 9);
    api.post("/api/bookings", json!({"student_id": student, "instructor_id": instructor, "start_time": monday.to_rfc3339(), "end_time": (monday + chrono::Duration::hours(1)).to_rfc3339()}))
        .await
        .expect_error(422, "invalid_value", Some("start_time"));

    api.put(&path, json!([{"day_of_week": 8, "start_time": "09:00", "end_time": "10:00"}]))
        .await
        .expect_error(422, "invalid_value", Some("[0].day_of_week"));
    api.put(&path, json!([{"day_of_week": 0, "start_time": "09:00", "end_time": "10:00"}]))
        .await
        .expect_error(422, "invalid_value", Some("[0].day_of_week"));
    api.put(&path, json!([{"day_of_week": 1, "start_time": "09:00", "end_time": "10:00"}, {"day_of_week": 2, "start_time": "11:00", "end_time": "10:00"}]))
        .await
        .expect_error(422, "invalid_value", Some("[1].end_time"));
    api.put(&path, json!([{"day_of_week": 1, "start_time": "09:00", "end_time": "11:00"}, {"day_of_week": 1, "start_time": "10:00", "end_time": "12:00"}]))
        .await
        .expect_error(422, "invalid_value", Some("[1]"));
    api.put(&path, json!([{"day_of_week": 1, "start_time": "9am", "end_time": "10:00"}]))
        .await
        .expect_error(422, "invalid_value", Some("[0].start_time"));
    api.put("/api/instructors/999999/availability", json!([]))
        .await
        .expect_error(404, "not_found", None);
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM instructor_availability WHERE instructor_id = {instructor}"
        ))
        .await,
        1,
        "a refused update changes nothing"
    );
    api.stop().await;
}

/// The next `weekday` (at least two days ahead) at `hour`:00 London time, as UTC.
pub fn next_weekday_at(weekday: chrono::Weekday, hour: u32) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike, TimeZone};
    let tz = dashlight_core::validate::timezone("tz", "Europe/London").unwrap();
    let mut d = (chrono::Utc::now() + chrono::Duration::days(2)).with_timezone(&tz).date_naive();
    while d.weekday() != weekday {
        d = d.succ_opt().unwrap();
    }
    tz.from_local_datetime(&d.and_hms_opt(hour, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&chrono::Utc)
}
