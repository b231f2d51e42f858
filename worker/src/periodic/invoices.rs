//! Invoices: every succeeded payment gets exactly one invoice, numbered without gaps per year
//! (`INV-<year>-<6 digits>`), with a PDF and an `invoice_issued` email to the student.
//!
//! One transaction per invoice:
//!
//! 1. pick one waiting payment (`payments_uninvoiced_idx`) `FOR UPDATE SKIP LOCKED`, so two
//!    workers never take the same one (and `invoices.payment_id` is unique besides);
//! 2. take the year's next number from `invoice_counters` with an upsert that locks the row:
//!    concurrent issuers queue on it, and a rollback gives the number back;
//! 3. insert the invoice, mark the payment `invoiced_at`, create the notification;
//! 4. write the PDF (temporary name, then rename) to `INVOICE_DIR/<year>/<number>.pdf`;
//! 5. commit — and remove the file if the commit fails.
//!
//! Amounts are tax-inclusive: VAT at [`VAT_RATE_PERCENT`] is `round(total × rate / (100 + rate))`
//! (a sixth at 20 %), net is the rest. Owns `invoices`, `invoice_counters` and
//! `payments.invoiced_at`.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    kinds::Kind,
    notify::{self, NewNotification},
};
use serde_json::json;
use sqlx::PgConnection;

use super::{
    Context, PeriodicError,
    invoice_pdf::{self, InvoiceDoc, Line},
};

/// UK VAT; amounts are tax-inclusive.
pub const VAT_RATE_PERCENT: i64 = 20;

/// Most invoices one run issues (the next tick continues).
const MAX_PER_RUN: usize = 1000;

/// The VAT inside a tax-inclusive `total` at `rate_percent`, rounded half up: `(tax, net)`.
pub fn split_vat(total: i64, rate_percent: i64) -> (i64, i64) {
    let denom = 100 + rate_percent;
    let tax = (2 * total * rate_percent + denom) / (2 * denom);
    (tax, total - tax)
}

/// The invoice number of `seq` in `year`.
pub fn invoice_number(year: i32, seq: i32) -> String {
    format!("INV-{year}-{seq:06}")
}

#[derive(Debug)]
struct Payment {
    id: i64,
    amount_minor: i64,
    currency: String,
    method: String,
    paid_at: Option<DateTime<Utc>>,
    booking_id: Option<i64>,
    purchase_id: Option<i64>,
    student_user_id: i64,
    student_name: String,
    student_email: String,
}

#[derive(Debug)]
struct Lesson {
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    instructor: String,
    pickup_location: Option<String>,
}

/// The scan: the next succeeded payment without an invoice (`payments_uninvoiced_idx`), locked,
/// skipping those other issuers hold and those in `$1` (failed in this run). `pub` so tests can
/// EXPLAIN it; [`issue_all`] runs the same file through `query_file_as!`.
pub const SCAN_SQL: &str = include_str!("../../queries/invoices_scan.sql");

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Invoices issued.
    pub issued: usize,
    /// Payments that already had an invoice (marked, nothing issued).
    pub already: usize,
    /// Payments whose invoice failed (rolled back; tried again next run).
    pub failed: usize,
}

/// Issues the invoices of every waiting payment; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let o = issue_all(ctx, now).await?;
    let redrawn = redraw_all(ctx).await?;
    Ok(format!(
        "issued {} invoices, {} payments already invoiced, {} failed, {redrawn} PDFs redrawn",
        o.issued, o.already, o.failed
    ))
}

/// Retention: deletes at most `batch` invoices issued before `cutoff`, and their PDF files.
/// Returns how many rows were deleted.
pub async fn purge_batch(ctx: &Context, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, PeriodicError> {
    let paths: Vec<Option<String>> = sqlx::query_scalar!(
        "DELETE FROM invoices WHERE id IN (SELECT id FROM invoices WHERE issued_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING pdf_path",
        cutoff,
        batch,
    )
    .fetch_all(&ctx.pool)
    .await?;
    for path in paths.iter().flatten() {
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path, error = %e, "an old invoice's PDF could not be removed"),
        }
    }
    Ok(paths.len() as u64)
}

/// Draws again the PDFs of invoices whose person was erased (`pdf_redraw_requested_at`, set by
/// the erasure): same number, dates, lines and totals, with the person's name and address as
/// they now are (the pseudonym). One invoice per transaction; returns how many were redrawn.
pub async fn redraw_all(ctx: &Context) -> Result<usize, PeriodicError> {
    let tz = ctx.config.school_timezone;
    let mut done = 0;
    while done < MAX_PER_RUN {
        let mut tx = ctx.pool.begin().await?;
        let Some(inv) = sqlx::query!(
            r#"SELECT i.id, i.invoice_number, i.issued_at, i.net_minor, i.tax_minor, i.total_minor, i.currency,
                      i.pdf_path AS "pdf_path!",
                      p.id AS payment_id, p.amount_minor, p.method, p.paid_at, p.booking_id, p.purchase_id, p.currency AS payment_currency,
                      u.id AS user_id, u.first_name || ' ' || u.last_name AS "student_name!", u.email
               FROM invoices i JOIN payments p ON p.id = i.payment_id JOIN students s ON s.id = p.student_id JOIN users u ON u.id = s.user_id
               WHERE i.pdf_redraw_requested_at IS NOT NULL AND i.pdf_path IS NOT NULL
               ORDER BY i.id LIMIT 1 FOR UPDATE OF i SKIP LOCKED"#
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            break;
        };
        let p = Payment {
            id: inv.payment_id,
            amount_minor: inv.amount_minor,
            currency: inv.payment_currency,
            method: inv.method,
            paid_at: inv.paid_at,
            booking_id: inv.booking_id,
            purchase_id: inv.purchase_id,
            student_user_id: inv.user_id,
            student_name: inv.student_name,
            student_email: inv.email,
        };
        let doc = InvoiceDoc {
            school_name: ctx.config.school_name.clone(),
            school_email: ctx.school_email(),
            number: inv.invoice_number,
            issued_at: inv.issued_at,
            issued_on: inv.issued_at.with_timezone(&tz).date_naive(),
            paid_on: p.paid_at.map(|t| t.with_timezone(&tz).date_naive()),
            method: p.method.clone(),
            student_name: p.student_name.clone(),
            student_email: p.student_email.clone(),
            lines: lines(&mut tx, &p, tz).await?,
            net_minor: inv.net_minor,
            tax_minor: inv.tax_minor,
            total_minor: inv.total_minor,
            vat_rate_percent: VAT_RATE_PERCENT,
            currency: inv.currency.trim().to_owned(),
        };
        write_pdf(Path::new(&inv.pdf_path), doc).await?;
        sqlx::query!("UPDATE invoices SET pdf_redraw_requested_at = NULL WHERE id = $1", inv.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(invoice = inv.id, user = p.student_user_id, "invoice PDF redrawn after an erasure");
        done += 1;
    }
    Ok(done)
}

/// Issues invoices one payment at a time until none is waiting (or `MAX_PER_RUN`, 1,000 a run).
pub async fn issue_all(ctx: &Context, now: DateTime<Utc>) -> Result<Outcome, PeriodicError> {
    let mut out = Outcome::default();
    let mut failed: HashSet<i64> = HashSet::new();
    while out.issued + out.already < MAX_PER_RUN {
        let mut tx = ctx.pool.begin().await?;
        let skip: Vec<i64> = failed.iter().copied().collect();
        let payment: Option<Payment> = sqlx::query_file_as!(Payment, "queries/invoices_scan.sql", &skip)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(p) = payment else { break };
        match issue(ctx, &mut tx, &p, now).await {
            Ok(Issued::Already) => {
                tx.commit().await?;
                out.already += 1;
            }
            Ok(Issued::New { invoice_id, number, file }) => match tx.commit().await {
                Ok(()) => {
                    out.issued += 1;
                    tracing::info!(invoice = invoice_id, %number, payment = p.id, user = p.student_user_id, total_minor = p.amount_minor, currency = %p.currency, pdf = %file.display(), "invoice issued");
                }
                Err(e) => {
                    // Remove the file unless the commit went through after all (a connection
                    // lost after the server committed): the email needs it then.
                    let committed: Option<bool> =
                        sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM invoices WHERE id = $1) AS "exists!""#, invoice_id)
                            .fetch_one(&ctx.pool)
                            .await
                            .ok();
                    if committed != Some(true) {
                        let _ = tokio::fs::remove_file(&file).await;
                    }
                    return Err(e.into());
                }
            },
            Err(e) => {
                // The transaction rolls back on drop and the number is given back; the PDF is
                // written last, so no file was left behind.
                drop(tx);
                failed.insert(p.id);
                out.failed += 1;
                tracing::error!(payment = p.id, user = p.student_user_id, error = %e, "issuing an invoice failed; will retry next run");
            }
        }
    }
    Ok(out)
}

enum Issued {
    Already,
    New { invoice_id: i64, number: String, file: PathBuf },
}

async fn issue(ctx: &Context, conn: &mut PgConnection, p: &Payment, now: DateTime<Utc>) -> Result<Issued, PeriodicError> {
    // Invoiced through another path (or before `invoiced_at` existed): just mark it.
    let existing: Option<DateTime<Utc>> = sqlx::query_scalar!("SELECT issued_at FROM invoices WHERE payment_id = $1", p.id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(issued_at) = existing {
        sqlx::query!("UPDATE payments SET invoiced_at = $2 WHERE id = $1", p.id, issued_at)
            .execute(&mut *conn)
            .await?;
        return Ok(Issued::Already);
    }
    let tz = ctx.config.school_timezone;
    let year = now.with_timezone(&tz).year();
    let seq: i32 = sqlx::query_scalar!(
        "INSERT INTO invoice_counters (year, last_seq) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last_seq = invoice_counters.last_seq + 1
         RETURNING last_seq",
        year,
    )
    .fetch_one(&mut *conn)
    .await?;
    let number = invoice_number(year, seq);
    let (tax, net) = split_vat(p.amount_minor, VAT_RATE_PERCENT);
    let dir = year_dir(&ctx.config.invoice_dir, year).await?;
    let file = dir.join(format!("{number}.pdf"));
    let path_text = file.to_string_lossy().into_owned();

    let invoice_id: i64 = sqlx::query_scalar!(
        "INSERT INTO invoices (payment_id, invoice_number, year, seq, net_minor, tax_minor, total_minor, currency, pdf_path, issued_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        p.id,
        &number,
        year,
        seq,
        net,
        tax,
        p.amount_minor,
        &p.currency,
        &path_text,
        now,
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!("UPDATE payments SET invoiced_at = $2 WHERE id = $1", p.id, now)
        .execute(&mut *conn)
        .await?;

    let mut n = NewNotification::to_user(Kind::InvoiceIssued, p.student_user_id, format!("invoice_issued:{invoice_id}"), now);
    n.title = format!("Invoice {number}");
    n.content = format!(
        "Invoice {number} for your payment of {}.",
        invoice_pdf::money(p.amount_minor, &p.currency)
    );
    n.data = json!({
        "invoice": {
            "number": number,
            "total_minor": p.amount_minor,
            "currency": p.currency.trim(),
            "issued_at": now.to_rfc3339(),
            "pdf_path": path_text,
        }
    });
    n.payment_id = Some(p.id);
    n.booking_id = p.booking_id;
    notify::create(conn, n).await?;

    let doc = InvoiceDoc {
        school_name: ctx.config.school_name.clone(),
        school_email: ctx.school_email(),
        number: number.clone(),
        issued_at: now,
        issued_on: now.with_timezone(&tz).date_naive(),
        paid_on: p.paid_at.map(|t| t.with_timezone(&tz).date_naive()),
        method: p.method.clone(),
        student_name: p.student_name.clone(),
        student_email: p.student_email.clone(),
        lines: lines(conn, p, tz).await?,
        net_minor: net,
        tax_minor: tax,
        total_minor: p.amount_minor,
        vat_rate_percent: VAT_RATE_PERCENT,
        currency: p.currency.trim().to_owned(),
    };
    write_pdf(&file, doc).await?;
    Ok(Issued::New { invoice_id, number, file })
}

/// What was paid for: the lesson (date, time, instructor), the package, or tuition in general.
async fn lines(conn: &mut PgConnection, p: &Payment, tz: Tz) -> Result<Vec<Line>, sqlx::Error> {
    let mut out = Vec::new();
    if let Some(bid) = p.booking_id {
        let lesson: Option<Lesson> = sqlx::query_as!(
            Lesson,
            r#"SELECT b.start_time, b.end_time, u.first_name || ' ' || u.last_name AS "instructor!", b.pickup_location
             FROM bookings b JOIN instructors i ON i.id = b.instructor_id JOIN users u ON u.id = i.user_id WHERE b.id = $1"#,
            bid,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(l) = lesson {
            let (s, e) = (l.start_time.with_timezone(&tz), l.end_time.with_timezone(&tz));
            let mut detail = format!("{} to {} with {}", s.format("%A %-d %B %Y, %H:%M"), e.format("%H:%M"), l.instructor);
            if let Some(pickup) = l.pickup_location.filter(|p| !p.is_empty()) {
                detail.push_str(&format!(", pick-up: {pickup}"));
            }
            out.push(Line {
                description: "Driving lesson".into(),
                detail: Some(detail),
            });
        }
    }
    if let Some(purchase) = p.purchase_id {
        let package = sqlx::query!(
            "SELECT lp.name, pp.lessons_total, pp.expires_at FROM package_purchases pp JOIN lesson_packages lp ON lp.id = pp.package_id WHERE pp.id = $1",
            purchase,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(pkg) = package {
            let (name, lessons, expires) = (pkg.name, pkg.lessons_total, pkg.expires_at);
            let plural = if lessons == 1 { "lesson" } else { "lessons" };
            let detail = format!("{lessons} {plural}, valid until {}", expires.with_timezone(&tz).format("%-d %B %Y"));
            out.push(Line {
                description: format!("Lesson package: {name}"),
                detail: Some(detail),
            });
        }
    }
    if out.is_empty() {
        out.push(Line {
            description: "Driving tuition".into(),
            detail: None,
        });
    }
    Ok(out)
}

/// `dir/<year>`, created if missing, made absolute (the sending worker may run elsewhere in the
/// file system than this one's working directory).
async fn year_dir(dir: &Path, year: i32) -> Result<PathBuf, PeriodicError> {
    let d = dir.join(year.to_string());
    tokio::fs::create_dir_all(&d)
        .await
        .map_err(|source| PeriodicError::File { path: d.clone(), source })?;
    tokio::fs::canonicalize(&d)
        .await
        .map_err(|source| PeriodicError::File { path: d, source })
}

/// Renders and writes the PDF: to a temporary name first, then renamed, so a reader never sees
/// half a file.
async fn write_pdf(file: &Path, doc: InvoiceDoc) -> Result<(), PeriodicError> {
    let bytes = tokio::task::spawn_blocking(move || invoice_pdf::render(&doc))
        .await
        .map_err(|e| PeriodicError::File {
            path: file.to_owned(),
            source: std::io::Error::other(e),
        })?;
    let tmp = file.with_extension(format!("pdf.tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let io = |source| PeriodicError::File {
        path: file.to_owned(),
        source,
    };
    tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
    if let Err(e) = tokio::fs::rename(&tmp, file).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vat_is_a_sixth_rounded() {
        assert_eq!(split_vat(4500, 20), (750, 3750));
        assert_eq!(split_vat(100, 20), (17, 83)); // 16.67
        assert_eq!(split_vat(3, 20), (1, 2)); // 0.5 rounds up
        assert_eq!(split_vat(2, 20), (0, 2)); // 0.33
        assert_eq!(split_vat(1, 0), (0, 1));
        assert_eq!(invoice_number(2026, 42), "INV-2026-000042");
    }
}
