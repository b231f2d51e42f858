//! The sample contexts every template is checked with at load time: [`Renderer::sample_context`]
//! (every optional field filled in), its sparse variant (`sparse_context`: nullable fields
//! null, lists empty) and the variants taking other branches (`check_contexts`).

use serde_json::{Value, json};

use super::Renderer;

impl Renderer {
    /// A realistic context of `kind` following the worker's context contract,
    /// with every optional field filled in. Used to check templates at load
    /// time and handy in tests. An unknown kind gets only the fields common to
    /// all kinds (`recipient` and `school`).
    pub fn sample_context(kind: &str) -> Value {
        let student = json!({
            "first_name": "Amelia",
            "last_name": "Hughes",
            "timezone": "Europe/London",
        });
        let instructor = json!({
            "first_name": "Daniel",
            "last_name": "Okafor",
            "timezone": "Europe/London",
        });
        let booking = |status: &str, start: &str, end: &str| {
            json!({
                "id": "0b6f3c1e-5a4d-4e2b-9c7a-1f2e3d4c5b6a",
                "start_time": start,
                "end_time": end,
                "pickup_location": "Leeds station, New Station Street entrance",
                "instructor_name": "Daniel Okafor",
                "student_name": "Amelia Hughes",
                "status": status,
            })
        };
        let previous = json!({
            "start_time": "2026-03-03T17:30:00Z",
            "end_time": "2026-03-03T18:30:00Z",
        });
        let confirmed = booking("confirmed", "2026-03-03T17:30:00Z", "2026-03-03T18:30:00Z");
        let moved = booking("confirmed", "2026-03-05T16:00:00Z", "2026-03-05T17:00:00Z");

        let (recipient, extra) = match kind {
            "booking_confirmed" => (student, json!({ "booking": confirmed, "page_url": PAGE_URL })),
            "lesson_reminder" => (
                student,
                json!({
                    "booking": confirmed,
                    "offset_label": "24 hours",
                    "page_url": PAGE_URL,
                    "confirm_url": "https://school.example/confirm/AAAAAAAAAAAqAAAAAAAAAAfN2m1s0aC9eU3bQxFvYc",
                }),
            ),
            "access_link" => (student, json!({ "page_url": PAGE_URL })),
            "booking_cancelled" => (
                student,
                json!({
                    "booking": booking("cancelled", "2026-03-03T17:30:00Z", "2026-03-03T18:30:00Z"),
                    "reason": "Your instructor is unwell",
                }),
            ),
            "booking_rescheduled" => (student, json!({ "booking": moved, "previous": previous })),
            "booking_alert" => (
                instructor,
                json!({ "booking": moved, "change": "rescheduled", "previous": previous }),
            ),
            "recurring_conflict" => (
                student,
                json!({
                    "series": {
                        "id": "5d2c7e1a-8b3f-4a6d-b0c9-2e4f6a8b0c1d",
                        "instructor_name": "Daniel Okafor",
                        "student_name": "Amelia Hughes",
                    },
                    "date": "2026-03-10T17:30:00Z",
                    "reason": "the instructor is already booked",
                }),
            ),
            "invoice_issued" => (
                student,
                json!({
                    "invoice": {
                        "number": "INV-2026-0042",
                        "total_minor": 4500,
                        "currency": "GBP",
                        "issued_at": "2026-03-03T09:15:00Z",
                    },
                }),
            ),
            "daily_agenda" => (
                instructor,
                json!({
                    "date": "2026-03-03T00:00:00Z",
                    "lessons": [
                        {
                            "start_time": "2026-03-03T09:00:00Z",
                            "end_time": "2026-03-03T10:00:00Z",
                            "student_name": "Amelia Hughes",
                            "pickup_location": "Leeds station, New Station Street entrance",
                        },
                        {
                            "start_time": "2026-03-03T11:30:00Z",
                            "end_time": "2026-03-03T13:30:00Z",
                            "student_name": "Harry Patel",
                            "pickup_location": null,
                        },
                        {
                            "start_time": "2026-03-03T17:30:00Z",
                            "end_time": "2026-03-03T18:30:00Z",
                            "student_name": "Chloe Evans",
                            "pickup_location": "14 Otley Road, Headingley",
                        },
                    ],
                    "count": 3,
                }),
            ),
            "lesson_report" => (
                student,
                json!({
                    "lesson": {
                        "date": "2026-03-03T17:30:00Z",
                        "instructor_name": "Daniel Okafor",
                        "notes": "Great progress today. Keep practising your mirror checks before changing lanes.",
                    },
                    "skills": [
                        { "name": "Roundabouts", "rating": 4, "notes": "Good lane choice on the big ones." },
                        { "name": "Parallel parking", "rating": 3, "notes": null },
                    ],
                    "progress": [
                        { "name": "Roundabouts", "level": "Confident", "percentage": 80 },
                        { "name": "Parallel parking", "level": "Developing", "percentage": 55 },
                    ],
                }),
            ),
            "new_message" => (
                student,
                json!({
                    "sender_name": "Daniel Okafor",
                    "preview": "Hi Amelia, could we start ten minutes earlier on Thursday? Let me know if that works for you.",
                    "thread_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                }),
            ),
            "test_reminder" => (student, json!({ "test": { "date": "2026-03-10T09:14:00Z", "days_before": 7 } })),
            "package_low" => (
                student,
                json!({
                    "package": {
                        "name": "10-lesson bundle",
                        "lessons_remaining": 1,
                        "expires_at": "2026-06-30T22:59:59Z",
                    },
                }),
            ),
            "crm_follow_up" => (
                json!({ "first_name": "Sarah", "last_name": "Whitfield", "timezone": "Europe/London" }),
                json!({
                    "contact": {
                        "name": "Oliver Bennett",
                        "email": "oliver.bennett@example.com",
                        "phone": "+447700900123",
                        "last_interaction_at": "2026-02-24T10:00:00Z",
                        "days_since": 7,
                    },
                }),
            ),
            "slot_offer" => (
                student,
                json!({
                    "offer": {
                        "id": 42,
                        "start_time": "2026-03-05T16:00:00Z",
                        "end_time": "2026-03-05T17:00:00Z",
                        "instructor_name": "Daniel Okafor",
                        "pickup_location": "Leeds station, New Station Street entrance",
                        "expires_at": "2026-03-05T13:00:00Z",
                        "url": "https://school.example/offers/q3Zk1vT9yXb0cP4mL8nR2sW6eH5gJ7aD-uF_oI3tY1E",
                    },
                }),
            ),
            "slot_taken" => (
                student,
                json!({
                    "offer": {
                        "id": 42,
                        "start_time": "2026-03-05T16:00:00Z",
                        "end_time": "2026-03-05T17:00:00Z",
                        "instructor_name": "Daniel Okafor",
                    },
                }),
            ),
            "student_confirmed" => (
                instructor,
                json!({ "booking": confirmed, "via": "push", "via_phrase": "from the push notification" }),
            ),
            "confirm_nudge" => (
                student,
                json!({ "booking": confirmed, "offset_label": "12 hours", "student_phone": null }),
            ),
            "unconfirmed_lesson" => (
                instructor,
                json!({ "booking": confirmed, "offset_label": "3 hours", "student_phone": "+447700900123" }),
            ),
            "rearrange_request" => (
                instructor,
                json!({ "booking": confirmed, "reply": "R can we do Thursday instead?", "from": "+447700900123" }),
            ),
            "inbound_reply" => (
                json!({ "first_name": "Greenway Driving School", "last_name": "", "timezone": "Europe/London" }),
                json!({
                    "booking": confirmed,
                    "reply": "Running 5 minutes late, sorry!",
                    "from": "+447700900123",
                    "sender_name": "Amelia Hughes",
                }),
            ),
            _ => (student, json!({})),
        };

        let mut ctx = json!({
            "recipient": recipient,
            "school": { "name": "Greenway Driving School" },
        });
        if let (Some(ctx), Value::Object(extra)) = (ctx.as_object_mut(), extra) {
            ctx.extend(extra);
        }
        ctx
    }
}

/// A person's page link in the sample contexts (see `dashlight_core::access`).
const PAGE_URL: &str = "https://school.example/me/3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c";

/// The contexts every template is rendered with at load time: the sample,
/// its sparse variant, and any other variant that takes a different branch.
pub(super) fn check_contexts(kind: &str) -> Vec<Value> {
    let mut contexts = vec![Renderer::sample_context(kind), sparse_context(kind)];
    if kind == "booking_alert" {
        let mut cancelled = Renderer::sample_context(kind);
        cancelled["change"] = json!("cancelled");
        cancelled["booking"]["status"] = json!("cancelled");
        contexts.push(cancelled);
    }
    contexts
}

/// The sample context with every nullable field null and every list empty,
/// so load-time checks also walk the `{{else}}` branches.
fn sparse_context(kind: &str) -> Value {
    let mut ctx = Renderer::sample_context(kind);
    let nulls: &[&str] = match kind {
        "booking_confirmed" => &["/booking/pickup_location", "/page_url"],
        "lesson_reminder" => &["/booking/pickup_location", "/page_url", "/confirm_url"],
        "booking_rescheduled" => &["/booking/pickup_location"],
        "booking_cancelled" => &["/booking/pickup_location", "/reason"],
        "booking_alert" => &["/booking/pickup_location", "/previous"],
        "lesson_report" => &["/lesson/notes"],
        "package_low" => &["/package/expires_at"],
        "slot_offer" => &["/offer/pickup_location"],
        "crm_follow_up" => &["/contact/email", "/contact/phone", "/contact/last_interaction_at"],
        "student_confirmed" => &["/booking/pickup_location", "/via_phrase"],
        "rearrange_request" | "confirm_nudge" => &["/booking/pickup_location"],
        "unconfirmed_lesson" => &["/booking/pickup_location", "/student_phone"],
        "inbound_reply" => &["/booking", "/sender_name"],
        _ => &[],
    };
    for pointer in nulls {
        if let Some(v) = ctx.pointer_mut(pointer) {
            *v = Value::Null;
        }
    }
    match kind {
        "booking_alert" => ctx["change"] = json!("new"),
        "daily_agenda" => {
            ctx["lessons"] = json!([]);
            ctx["count"] = json!(0);
        }
        "lesson_report" => {
            ctx["skills"] = json!([]);
            ctx["progress"] = json!([]);
        }
        "test_reminder" => ctx["test"]["days_before"] = json!(1),
        "package_low" => ctx["package"]["lessons_remaining"] = json!(0),
        "crm_follow_up" => ctx["recipient"]["first_name"] = json!(""),
        _ => {}
    }
    ctx
}
