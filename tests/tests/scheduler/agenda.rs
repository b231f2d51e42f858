//! The daily agenda: each instructor's lessons of the day at 07:00 in their own time zone,
//! once.

use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::world::{Person, World};
use dashlight_worker::periodic::Context;
use serde_json::json;

use crate::{assert_renders, notes, run, t};

/// Moves a person to another time zone.
async fn set_timezone(w: &World, p: &Person, tz: &str) {
    sqlx::query("UPDATE users SET timezone = $2 WHERE id = $1")
        .bind(p.user_id)
        .bind(tz)
        .execute(w.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn daily_agenda_goes_out_at_seven_local_time_once_per_instructor() {
    let w = World::start().await;
    let student = w.person("student", "Vera", None).await;
    let london = w.person("instructor", "Lena", None).await;
    let new_york = w.person("instructor", "Nate", None).await;
    let idle = w.person("instructor", "Otto", None).await;
    set_timezone(&w, &new_york, "America/New_York").await;
    let booked_at = t("2026-03-01T00:00:00Z");
    // Lena (London, GMT in March): two lessons on Tuesday 3 March, one on the 4th.
    w.book(&student, &london, t("2026-03-03T14:00:00Z"), booked_at).await;
    w.book(&student, &london, t("2026-03-03T09:30:00Z"), booked_at).await;
    w.book(&student, &london, t("2026-03-04T09:00:00Z"), booked_at).await;
    // Nate (New York, UTC-5): 10:00 and 22:00 on 3 March, the latter already the 4th in UTC.
    w.book(&student, &new_york, t("2026-03-03T15:00:00Z"), booked_at).await;
    w.book(&student, &new_york, t("2026-03-04T03:00:00Z"), booked_at).await;
    // Otto: nothing on the 3rd.
    w.book(&student, &idle, t("2026-03-05T12:00:00Z"), booked_at).await;

    let (clock, hand) = Clock::manual(t("2026-03-03T06:59:00Z"));
    let ctx = Context::new(&w.config, w.pool().clone(), clock);
    run(&ctx, PeriodicTask::DailyAgenda, t("2026-03-03T06:59:00Z")).await;
    assert!(notes(w.pool(), "daily_agenda").await.is_empty(), "nobody before 07:00 local");

    // 08:00 in London is 03:00 in New York.
    for tick in ["2026-03-03T07:00:00Z", "2026-03-03T07:15:00Z", "2026-03-03T08:00:00Z"] {
        hand.set(t(tick));
        run(&ctx, PeriodicTask::DailyAgenda, t(tick)).await;
    }
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 1, "only Lena, once: {agendas:#?}");
    let lena = &agendas[0];
    assert_eq!(lena.user_id, Some(london.user_id));
    assert_eq!(lena.dedupe_key, format!("daily_agenda:{}:2026-03-03", london.profile_id));
    assert_eq!(lena.data["date"], json!("2026-03-03"));
    assert_eq!(lena.data["count"], json!(2));
    let starts: Vec<&str> = lena.data["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["start_time"].as_str().unwrap())
        .collect();
    assert_eq!(starts, vec!["2026-03-03T09:30:00+00:00", "2026-03-03T14:00:00+00:00"]);
    assert_eq!(lena.data["lessons"][0]["student_name"], json!("Vera Tester"));
    assert_eq!(lena.data["lessons"][0]["pickup_location"], json!("Station Road"));
    assert_eq!(
        lena.expires_at,
        Some(t("2026-03-04T00:00:00Z")),
        "an agenda is pointless after its day"
    );

    // 07:15 in New York.
    for tick in ["2026-03-03T12:15:00Z", "2026-03-03T12:30:00Z", "2026-03-03T18:00:00Z"] {
        hand.set(t(tick));
        run(&ctx, PeriodicTask::DailyAgenda, t(tick)).await;
    }
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 2, "Lena and Nate, once each; Otto has no lessons: {agendas:#?}");
    let nate = &agendas[1];
    assert_eq!(nate.user_id, Some(new_york.user_id));
    assert_eq!(nate.due_at, t("2026-03-03T12:15:00Z"));
    assert_eq!(nate.data["count"], json!(2), "the 22:00 lesson is on his 3 March");
    assert_eq!(nate.expires_at, Some(t("2026-03-04T05:00:00Z")));
    assert!(agendas.iter().all(|a| a.user_id != Some(idle.user_id)));
    assert_renders(&w, "daily_agenda").await;

    // The next morning in London: Lena's one lesson of the 4th.
    hand.set(t("2026-03-04T07:00:00Z"));
    run(&ctx, PeriodicTask::DailyAgenda, t("2026-03-04T07:00:00Z")).await;
    let agendas = notes(w.pool(), "daily_agenda").await;
    assert_eq!(agendas.len(), 3);
    assert_eq!(agendas[2].data["count"], json!(1));
    assert_eq!(agendas[2].dedupe_key, format!("daily_agenda:{}:2026-03-04", london.profile_id));
}
