//! Invoices: concurrent runs number payments without gaps and write real PDFs; the invoice
//! email carries its PDF.

use chrono::Utc;
use dashlight_core::{Clock, jobs::PeriodicTask};
use dashlight_tests::{wait::try_wait_until, world::World};
use dashlight_worker::periodic::Context;
use serde_json::json;
use std::{collections::BTreeSet, time::Duration};

use crate::{assert_renders, count, notes, payments, run, t};

const LONG: Duration = Duration::from_secs(60);

#[derive(Debug, sqlx::FromRow)]
struct Invoice {
    payment_id: i64,
    seq: i32,
    invoice_number: String,
    net_minor: i64,
    tax_minor: i64,
    total_minor: i64,
    pdf_path: Option<String>,
}

#[tokio::test]
async fn concurrent_invoice_runs_number_thirty_payments_without_gaps_and_write_real_pdfs() {
    let w = World::start().await;
    let student = w.person("student", "Hannah", None).await;
    let instructor = w.person("instructor", "Ivan", None).await;
    let now = t("2026-03-03T09:00:00Z");
    let (clock, _hand) = Clock::manual(now);
    let lesson = w.book(&student, &instructor, t("2026-03-05T10:00:00Z"), now).await;
    let ids = payments(&w, &student, 30, now).await;
    sqlx::query("UPDATE payments SET booking_id = $2 WHERE id = $1")
        .bind(ids[0])
        .bind(lesson.id)
        .execute(w.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO payments (student_id, amount_minor, currency, method, status) VALUES ($1, 5000, 'GBP', 'card', 'pending')")
        .bind(student.profile_id)
        .execute(w.pool())
        .await
        .unwrap();

    // An unwritable invoice directory: every issue rolls back, and with it its number.
    let mut broken = w.config.clone();
    broken.invoice_dir = "/dev/null/invoices".into();
    let summary = run(&Context::new(&broken, w.pool().clone(), clock.clone()), PeriodicTask::Invoices, now).await;
    assert!(summary.contains("30 failed"), "{summary}");
    assert_eq!(count(w.pool(), "SELECT count(*) FROM invoices").await, 0);
    assert_eq!(
        count(w.pool(), "SELECT count(*) FROM invoice_counters").await,
        0,
        "rolled-back numbers are given back"
    );

    // Four workers at once.
    let ctx = Context::new(&w.config, w.pool().clone(), clock.clone());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let ctx = ctx.clone();
            tokio::spawn(async move { run(&ctx, PeriodicTask::Invoices, now).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let rows: Vec<Invoice> =
        sqlx::query_as("SELECT payment_id, seq, invoice_number, net_minor, tax_minor, total_minor, pdf_path FROM invoices ORDER BY seq")
            .fetch_all(w.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 30);
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "numbers 1..30, no gap, no duplicate"
    );
    assert_eq!(
        rows.iter().map(|r| r.payment_id).collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>(),
        "one invoice per payment"
    );
    for r in &rows {
        assert_eq!(r.invoice_number, format!("INV-2026-{:06}", r.seq));
        assert_eq!(r.net_minor + r.tax_minor, r.total_minor);
        assert_eq!(
            r.tax_minor,
            (r.total_minor as f64 / 6.0).round() as i64,
            "VAT is a sixth of a tax-inclusive total"
        );
    }
    assert_eq!(
        count(w.pool(), "SELECT last_seq::bigint FROM invoice_counters WHERE year = 2026").await,
        30
    );

    // One invoice_issued per invoice, pointing at its PDF.
    let issued = notes(w.pool(), "invoice_issued").await;
    assert_eq!(issued.len(), 30);
    assert!(issued.iter().all(|n| n.user_id == Some(student.user_id)));
    assert_renders(&w, "invoice_issued").await;
    let first = issued
        .iter()
        .find(|n| n.data["invoice"]["number"] == json!("INV-2026-000001"))
        .unwrap();
    assert_eq!(first.data["invoice"]["currency"], json!("GBP"));
    assert_eq!(first.data["invoice"]["issued_at"], json!(now.to_rfc3339()));
    let path = first.data["invoice"]["pdf_path"].as_str().unwrap();
    assert_eq!(Some(path.to_owned()), rows[0].pdf_path);
    assert!(path.ends_with("/2026/INV-2026-000001.pdf"), "{path}");

    // The PDF is a real one, and says what it is.
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"%PDF"));
    let doc = lopdf::Document::load_mem(&bytes).expect("lopdf parses the invoice");
    let text = doc.extract_text(&[1]).unwrap();
    for expected in [
        "INV-2026-000001",
        "Hannah Tester",
        "hannah@school.test",
        "Dashlight Driving School",
        "VAT",
    ] {
        assert!(text.contains(expected), "{expected:?} not in the PDF text: {text}");
    }
    let lesson_invoice = rows.iter().find(|r| r.payment_id == ids[0]).unwrap();
    let lesson_pdf = lopdf::Document::load_mem(&std::fs::read(lesson_invoice.pdf_path.as_ref().unwrap()).unwrap())
        .unwrap()
        .extract_text(&[1])
        .unwrap();
    assert!(
        lesson_pdf.contains("Driving lesson") && lesson_pdf.contains("Ivan Tester"),
        "{lesson_pdf}"
    );
    assert!(lesson_pdf.contains("Thursday 5 March 2026, 10:00"), "{lesson_pdf}");
    let leftovers: Vec<String> = std::fs::read_dir(std::path::Path::new(path).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".pdf"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Nothing is left to do: a re-run issues nothing.
    let summary = run(&ctx, PeriodicTask::Invoices, now).await;
    assert!(summary.starts_with("issued 0 invoices"), "{summary}");
    assert_eq!(count(w.pool(), "SELECT count(*) FROM invoices").await, 30);
    assert_eq!(notes(w.pool(), "invoice_issued").await.len(), 30);
}

#[tokio::test]
async fn invoice_email_arrives_with_the_pdf_attached() {
    let w = World::start().await;
    let student = w.person("student", "Isla", None).await;
    payments(&w, &student, 1, Utc::now()).await;
    let worker = w.spawn_worker(Clock::system());
    let ctx = Context::new(&w.config, w.pool().clone(), Clock::system());
    let summary = run(&ctx, PeriodicTask::Invoices, Utc::now()).await;
    assert!(summary.starts_with("issued 1 invoices"), "{summary}");

    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    assert_eq!(mails[0].rcpt_to, vec![student.email.clone()]);
    let msg = mail_parser::MessageParser::default().parse(&mails[0].data).expect("parses");
    assert!(msg.subject().unwrap().contains("INV-"), "{:?}", msg.subject());
    let pdfs: Vec<_> = msg
        .attachments()
        .filter(|a| {
            use mail_parser::MimeHeaders;
            a.content_type()
                .is_some_and(|ct| ct.ctype() == "application" && ct.subtype() == Some("pdf"))
        })
        .collect();
    assert_eq!(pdfs.len(), 1, "one application/pdf attachment");
    assert!(pdfs[0].contents().starts_with(b"%PDF"));
    {
        use mail_parser::MimeHeaders;
        assert!(
            pdfs[0]
                .attachment_name()
                .is_some_and(|n| n.starts_with("INV-") && n.ends_with(".pdf")),
            "{:?}",
            pdfs[0].attachment_name()
        );
    }
    try_wait_until("the delivery is recorded as sent", LONG, || async {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_deliveries WHERE status = 'sent'")
            .fetch_one(w.pool())
            .await?;
        Ok((sent == 1).then_some(()))
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
}
