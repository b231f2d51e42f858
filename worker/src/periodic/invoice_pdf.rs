//! The invoice PDF: one A4 page drawn with the PDF standard fonts (Helvetica), so nothing has
//! to be embedded or found on the machine. Pure: [`render`] turns an [`InvoiceDoc`] into bytes;
//! where the file goes is [`super::invoices`]' business.

use chrono::{DateTime, NaiveDate, Utc};
use printpdf::{
    BuiltinFont, Color, Line as PdfLine, LinePoint, Op, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt, Rgb, TextItem,
};

/// One thing paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What it is ("Driving lesson", "Lesson package: …").
    pub description: String,
    /// When, with whom, how many lessons.
    pub detail: Option<String>,
}

/// Everything printed on an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceDoc {
    /// The school (`SCHOOL_NAME`).
    pub school_name: String,
    /// The school's address (from `MAIL_FROM`).
    pub school_email: String,
    /// `INV-<year>-<seq>`.
    pub number: String,
    /// Issue time (the PDF's creation date).
    pub issued_at: DateTime<Utc>,
    /// Issue date, school time zone.
    pub issued_on: NaiveDate,
    /// Payment date, school time zone.
    pub paid_on: Option<NaiveDate>,
    /// Payment method (`card`, `cash`, ...).
    pub method: String,
    /// Billed to.
    pub student_name: String,
    /// The student's email (the address we hold).
    pub student_email: String,
    /// What was paid for.
    pub lines: Vec<Line>,
    /// Net amount, minor units.
    pub net_minor: i64,
    /// VAT, minor units.
    pub tax_minor: i64,
    /// Total paid, minor units.
    pub total_minor: i64,
    /// VAT rate in percent.
    pub vat_rate_percent: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// `£45.00`, `€1,250.00`, `$9.99`, `45.00 CHF`.
pub fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let units = (abs / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let amount = format!("{grouped}.{:02}", abs % 100);
    match currency.trim() {
        "GBP" => format!("{sign}£{amount}"),
        "EUR" => format!("{sign}€{amount}"),
        "USD" => format!("{sign}${amount}"),
        other => format!("{sign}{amount} {other}"),
    }
}

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;

/// Widths (thousandths of an em) of A-Z and a-z in Helvetica and Helvetica-Bold, from the
/// standard AFM files.
const UPPER: [[u16; 26]; 2] = [
    [
        667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611,
    ],
    [
        722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611,
    ],
];
const LOWER: [[u16; 26]; 2] = [
    [
        556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500,
    ],
    [
        556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500,
    ],
];

/// Width of `s` in Helvetica (or its bold face) at `size` points, for right alignment.
fn width(s: &str, bold: bool, size: f32) -> f32 {
    let face = usize::from(bold);
    let units: u32 = s
        .chars()
        .map(|c| {
            u32::from(match c {
                'A'..='Z' => UPPER[face][c as usize - 'A' as usize],
                'a'..='z' => LOWER[face][c as usize - 'a' as usize],
                '0'..='9' | '£' | '€' | '$' => 556,
                '.' | ',' | ' ' => 278,
                '-' | '(' | ')' => 333,
                '%' => 889,
                _ => 556,
            })
        })
        .sum();
    units as f32 * size / 1000.0
}

struct Canvas {
    ops: Vec<Op>,
}

impl Canvas {
    fn text(&mut self, x: f32, y: f32, font: BuiltinFont, size: f32, s: &str) {
        self.ops.extend([
            Op::StartTextSection,
            Op::SetTextCursor {
                pos: Point { x: Pt(x), y: Pt(y) },
            },
            Op::SetFont {
                font: PdfFontHandle::Builtin(font),
                size: Pt(size),
            },
            Op::ShowText {
                items: vec![TextItem::Text(s.to_owned())],
            },
            Op::EndTextSection,
        ]);
    }

    fn right(&mut self, x: f32, y: f32, font: BuiltinFont, size: f32, s: &str) {
        let bold = matches!(font, BuiltinFont::HelveticaBold);
        self.text(x - width(s, bold, size), y, font, size, s);
    }

    fn grey(&mut self, level: f32) {
        self.ops.push(Op::SetFillColor {
            col: Color::Rgb(Rgb {
                r: level,
                g: level,
                b: level,
                icc_profile: None,
            }),
        });
    }

    fn rule(&mut self, y: f32) {
        self.ops.extend([
            Op::SetOutlineColor {
                col: Color::Rgb(Rgb {
                    r: 0.75,
                    g: 0.75,
                    b: 0.75,
                    icc_profile: None,
                }),
            },
            Op::SetOutlineThickness { pt: Pt(0.75) },
            Op::DrawLine {
                line: PdfLine {
                    points: vec![
                        LinePoint {
                            p: Point { x: Pt(LEFT), y: Pt(y) },
                            bezier: false,
                        },
                        LinePoint {
                            p: Point { x: Pt(RIGHT), y: Pt(y) },
                            bezier: false,
                        },
                    ],
                    is_closed: false,
                },
            },
        ]);
    }
}

/// Splits `s` into lines of at most `max` characters at spaces.
fn wrap(s: &str, max: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > max {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

fn long_date(d: NaiveDate) -> String {
    d.format("%-d %B %Y").to_string()
}

/// Renders the invoice as a PDF document.
pub fn render(doc: &InvoiceDoc) -> Vec<u8> {
    use BuiltinFont::{Helvetica, HelveticaBold};
    let mut c = Canvas { ops: Vec::new() };
    let cur = doc.currency.as_str();

    // Header: the school on the left, "INVOICE" and its number on the right.
    c.grey(0.1);
    c.text(LEFT, PAGE_H - 70.0, HelveticaBold, 20.0, &doc.school_name);
    c.grey(0.4);
    c.text(LEFT, PAGE_H - 88.0, Helvetica, 10.0, &doc.school_email);
    c.grey(0.1);
    c.right(RIGHT, PAGE_H - 70.0, HelveticaBold, 22.0, "INVOICE");
    c.right(RIGHT, PAGE_H - 88.0, Helvetica, 11.0, &doc.number);
    c.rule(PAGE_H - 105.0);

    // Facts of the invoice, then whom it is for.
    let mut y = PAGE_H - 135.0;
    let mut facts = vec![("Invoice number", doc.number.clone()), ("Invoice date", long_date(doc.issued_on))];
    if let Some(paid) = doc.paid_on {
        facts.push(("Paid on", long_date(paid)));
    }
    facts.push(("Payment method", doc.method.replace('_', " ")));
    facts.push(("Currency", cur.to_owned()));
    for (label, value) in &facts {
        c.grey(0.4);
        c.text(LEFT, y, Helvetica, 10.0, label);
        c.grey(0.1);
        c.text(LEFT + 110.0, y, Helvetica, 10.0, value);
        y -= 16.0;
    }
    y -= 14.0;
    c.grey(0.4);
    c.text(LEFT, y, HelveticaBold, 10.0, "BILL TO");
    c.grey(0.1);
    y -= 16.0;
    c.text(LEFT, y, Helvetica, 11.0, &doc.student_name);
    y -= 15.0;
    c.text(LEFT, y, Helvetica, 10.0, &doc.student_email);

    // What was paid for.
    y -= 40.0;
    c.grey(0.4);
    c.text(LEFT, y, HelveticaBold, 10.0, "DESCRIPTION");
    c.right(RIGHT, y, HelveticaBold, 10.0, "AMOUNT");
    c.rule(y - 7.0);
    y -= 26.0;
    for (i, line) in doc.lines.iter().enumerate() {
        c.grey(0.1);
        c.text(LEFT, y, HelveticaBold, 11.0, &line.description);
        if i == 0 {
            c.right(RIGHT, y, Helvetica, 11.0, &money(doc.total_minor, cur));
        }
        y -= 15.0;
        if let Some(detail) = &line.detail {
            c.grey(0.35);
            for part in wrap(detail, 90) {
                c.text(LEFT, y, Helvetica, 9.5, &part);
                y -= 13.0;
            }
        }
        y -= 8.0;
    }
    c.rule(y);

    // Totals, right-aligned.
    y -= 22.0;
    let vat_label = format!("VAT at {}%", doc.vat_rate_percent);
    for (label, amount, bold) in [
        ("Net", doc.net_minor, false),
        (vat_label.as_str(), doc.tax_minor, false),
        ("Total", doc.total_minor, true),
    ] {
        let font = if bold { HelveticaBold } else { Helvetica };
        let size = if bold { 12.0 } else { 10.5 };
        c.grey(0.1);
        c.text(RIGHT - 200.0, y, font, size, label);
        c.right(RIGHT, y, font, size, &money(amount, cur));
        y -= 18.0;
    }

    // Footer.
    c.grey(0.4);
    c.text(
        LEFT,
        70.0,
        Helvetica,
        9.0,
        &format!("Prices include VAT at {}%. Paid in full - thank you.", doc.vat_rate_percent),
    );
    c.text(LEFT, 57.0, Helvetica, 9.0, &format!("{} - {}", doc.school_name, doc.school_email));

    let page = PdfPage::new(printpdf::Mm(210.0), printpdf::Mm(297.0), c.ops);
    let mut pdf = PdfDocument::new(&format!("Invoice {}", doc.number));
    if let Ok(created) = printpdf::OffsetDateTime::from_unix_timestamp(doc.issued_at.timestamp()) {
        pdf.metadata.info.creation_date = created;
        pdf.metadata.info.modification_date = created;
        pdf.metadata.info.metadata_date = created;
    }
    pdf.metadata.info.author = doc.school_name.clone();
    pdf.metadata.info.subject = format!("Invoice {} for {}", doc.number, doc.student_name);
    pdf.with_pages(vec![page]).save(&PdfSaveOptions::default(), &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_wrapping() {
        assert_eq!(money(4500, "GBP"), "£45.00");
        assert_eq!(money(125_000, "EUR"), "€1,250.00");
        assert_eq!(money(7, "CHF"), "0.07 CHF");
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
    }

    #[test]
    fn renders_a_pdf() {
        let doc = InvoiceDoc {
            school_name: "Greenway Driving School".into(),
            school_email: "office@greenway.test".into(),
            number: "INV-2026-000042".into(),
            issued_at: DateTime::from_timestamp(1_772_528_400, 0).unwrap(),
            issued_on: NaiveDate::from_ymd_opt(2026, 3, 3).unwrap(),
            paid_on: NaiveDate::from_ymd_opt(2026, 3, 2),
            method: "bank_transfer".into(),
            student_name: "Amelia Hughes".into(),
            student_email: "amelia@example.com".into(),
            lines: vec![Line {
                description: "Driving lesson".into(),
                detail: Some("Tuesday 3 March 2026, 17:30 to 18:30 with Daniel Okafor".into()),
            }],
            net_minor: 3750,
            tax_minor: 750,
            total_minor: 4500,
            vat_rate_percent: 20,
            currency: "GBP".into(),
        };
        let bytes = render(&doc);
        assert!(bytes.starts_with(b"%PDF"));
    }
}
