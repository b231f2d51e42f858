//! A strict RFC 5545 reader, independent of the code under test: every line ends with CRLF, no
//! physical line is longer than 75 octets, folded lines are unfolded, each content line is
//! `name *(";" param) ":" value` with the grammar's characters, components nest properly under
//! one `VCALENDAR`, which has `VERSION:2.0` and a `PRODID`, and every `VEVENT` has its `UID`,
//! `DTSTAMP` and `DTSTART`. Anything else is an error naming the line.

use chrono::{DateTime, NaiveDateTime, Utc};

/// A content line.
#[derive(Debug, Clone)]
pub struct Prop {
    /// Upper-case name.
    pub name: String,
    /// Parameters, names upper-cased, values unquoted.
    pub params: Vec<(String, String)>,
    /// The raw value (still escaped for TEXT).
    pub value: String,
}

impl Prop {
    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A component with its properties and sub-components.
#[derive(Debug, Clone)]
pub struct Component {
    /// `VCALENDAR`, `VEVENT`, ...
    pub name: String,
    /// Properties in order.
    pub props: Vec<Prop>,
    /// Sub-components in order.
    pub children: Vec<Component>,
}

impl Component {
    /// The only property of a name (an error when repeated).
    pub fn prop(&self, name: &str) -> Option<&Prop> {
        let all: Vec<&Prop> = self.props.iter().filter(|p| p.name == name).collect();
        assert!(all.len() <= 1, "{} has {} {name} properties", self.name, all.len());
        all.first().copied()
    }

    /// A property's raw value.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.prop(name).map(|p| p.value.as_str())
    }

    /// Every property of a name.
    pub fn all(&self, name: &str) -> Vec<&Prop> {
        self.props.iter().filter(|p| p.name == name).collect()
    }

    /// The sub-components of a name.
    pub fn children(&self, name: &str) -> Vec<&Component> {
        self.children.iter().filter(|c| c.name == name).collect()
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

fn parse_line(line: &str) -> Result<Prop, String> {
    let name_end = line.find(|c: char| !is_name_char(c)).ok_or_else(|| format!("no ':' in {line:?}"))?;
    if name_end == 0 {
        return Err(format!("no property name in {line:?}"));
    }
    let name = line[..name_end].to_ascii_uppercase();
    let mut rest = &line[name_end..];
    let mut params = Vec::new();
    while let Some(r) = rest.strip_prefix(';') {
        let eq = r.find('=').ok_or_else(|| format!("parameter without '=' in {line:?}"))?;
        let pname = &r[..eq];
        if pname.is_empty() || !pname.chars().all(is_name_char) {
            return Err(format!("bad parameter name {pname:?} in {line:?}"));
        }
        let mut v = &r[eq + 1..];
        let value;
        if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').ok_or_else(|| format!("unterminated quoted parameter in {line:?}"))?;
            value = q[..end].to_owned();
            v = &q[end + 1..];
        } else {
            let end = v.find([';', ':', ',']).unwrap_or(v.len());
            value = v[..end].to_owned();
            if value.contains('"') {
                return Err(format!("a DQUOTE inside an unquoted parameter value in {line:?}"));
            }
            v = &v[end..];
        }
        if v.starts_with(',') {
            return Err(format!("multi-valued parameters are not expected here: {line:?}"));
        }
        params.push((pname.to_ascii_uppercase(), value));
        rest = v;
    }
    let value = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("expected ':' after the name and parameters in {line:?}"))?;
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("a control character in the value of {line:?}"));
    }
    Ok(Prop {
        name,
        params,
        value: value.to_owned(),
    })
}

/// Parses an iCalendar object strictly.
pub fn parse(raw: &str) -> Result<Component, String> {
    if !raw.ends_with("\r\n") {
        return Err("the object does not end with CRLF".into());
    }
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            return Err(format!("a bare LF at octet {i}"));
        }
        if *b == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            return Err(format!("a bare CR at octet {i}"));
        }
    }
    let mut logical: Vec<String> = Vec::new();
    for (n, physical) in raw[..raw.len() - 2].split("\r\n").enumerate() {
        if physical.len() > 75 {
            return Err(format!("line {} is {} octets (at most 75): {physical:?}", n + 1, physical.len()));
        }
        if let Some(cont) = physical.strip_prefix([' ', '\t']) {
            let last = logical.last_mut().ok_or("the object starts with a continuation line")?;
            last.push_str(cont);
        } else if physical.is_empty() {
            return Err(format!("empty line {}", n + 1));
        } else {
            logical.push(physical.to_owned());
        }
    }
    let mut stack: Vec<Component> = Vec::new();
    let mut root: Option<Component> = None;
    for line in logical {
        let p = parse_line(&line)?;
        match p.name.as_str() {
            "BEGIN" => {
                if root.is_some() {
                    return Err(format!("content after the end of the calendar: {line:?}"));
                }
                if stack.is_empty() && p.value != "VCALENDAR" {
                    return Err(format!("the object must start with BEGIN:VCALENDAR, got {line:?}"));
                }
                stack.push(Component {
                    name: p.value.to_ascii_uppercase(),
                    props: vec![],
                    children: vec![],
                });
            }
            "END" => {
                let c = stack.pop().ok_or_else(|| format!("END without BEGIN: {line:?}"))?;
                if c.name != p.value.to_ascii_uppercase() {
                    return Err(format!("END:{} closes BEGIN:{}", p.value, c.name));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(c),
                    None => root = Some(c),
                }
            }
            _ => stack
                .last_mut()
                .ok_or_else(|| format!("a property outside any component: {line:?}"))?
                .props
                .push(p),
        }
    }
    if !stack.is_empty() {
        return Err(format!("{} left open", stack.last().unwrap().name));
    }
    let cal = root.ok_or("no VCALENDAR")?;
    if cal.value("VERSION") != Some("2.0") {
        return Err("VERSION:2.0 missing".into());
    }
    if cal.value("PRODID").is_none_or(str::is_empty) {
        return Err("PRODID missing".into());
    }
    for e in cal.children("VEVENT") {
        for required in ["UID", "DTSTAMP", "DTSTART"] {
            if e.prop(required).is_none() {
                return Err(format!("a VEVENT without {required}"));
            }
        }
        if e.prop("DTEND").is_some() && e.prop("DURATION").is_some() {
            return Err("a VEVENT with both DTEND and DURATION".into());
        }
    }
    Ok(cal)
}

/// A UTC DATE-TIME (`YYYYMMDDTHHMMSSZ`).
pub fn utc(v: &str) -> DateTime<Utc> {
    let s = v.strip_suffix('Z').unwrap_or_else(|| panic!("{v:?} is not in UTC"));
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S")
        .unwrap_or_else(|e| panic!("{v:?}: {e}"))
        .and_utc()
}

/// A TEXT value unescaped.
pub fn text(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(c @ ('\\' | ';' | ',')) => out.push(c),
                other => panic!("bad escape \\{other:?} in {v:?}"),
            }
        } else {
            assert!(!matches!(c, ';' | ','), "unescaped {c:?} in TEXT {v:?}");
            out.push(c);
        }
    }
    out
}
