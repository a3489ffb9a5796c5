//! Action parameters templated from an alert: `{labels.vmid}`, `{annotations.summary}`,
//! `{alertname}`, `{fingerprint}`, `{status}`. Placeholders are checked when the rules load
//! ([`check`]); a label an alert lacks is an error at decision time, audited as such, never an
//! action on an empty target.

use proxflow_schemas::alert::AlertReceived;

/// A template problem: the placeholder and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without `}`, or an unknown placeholder.
    #[error(
        "placeholder {0:?} is not one of {{labels.<name>}}, {{annotations.<name>}}, {{alertname}}, {{fingerprint}}, {{status}}"
    )]
    Unknown(String),
    /// The alert lacks the label or annotation.
    #[error("the alert has no {0}")]
    Missing(String),
}

/// The placeholders of `text`, in order (`labels.vmid`, ...).
fn placeholders(text: &str) -> Result<Vec<(usize, usize, &str)>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(open) = text[rest..].find('{') {
        let start = rest + open;
        let close = text[start..]
            .find('}')
            .map(|c| start + c)
            .ok_or_else(|| TemplateError::Unknown(text[start..].to_string()))?;
        let name = &text[start + 1..close];
        let known = matches!(name, "alertname" | "fingerprint" | "status")
            || name
                .strip_prefix("labels.")
                .or_else(|| name.strip_prefix("annotations."))
                .is_some_and(|n| !n.is_empty());
        if !known {
            return Err(TemplateError::Unknown(format!("{{{name}}}")));
        }
        out.push((start, close + 1, name));
        rest = close + 1;
    }
    Ok(out)
}

/// Checks a template's placeholders without an alert (rules-file validation).
pub fn check(text: &str) -> Result<(), TemplateError> {
    placeholders(text).map(drop)
}

/// Fills a template from `alert`.
pub fn render(text: &str, alert: &AlertReceived) -> Result<String, TemplateError> {
    render_with(text, alert, |value, out| out.push_str(value))
}

/// Fills a URL template from `alert`, each value percent-encoded (everything but `A-Z a-z 0-9 - .
/// _ ~`), so a label can only ever be data inside its segment: `x/../../admin?q=1#` cannot climb
/// the path, add a query or cut it short.
pub fn render_url(text: &str, alert: &AlertReceived) -> Result<String, TemplateError> {
    render_with(text, alert, |value, out| {
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    })
}

fn render_with(
    text: &str,
    alert: &AlertReceived,
    put: impl Fn(&str, &mut String),
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, name) in placeholders(text)? {
        out.push_str(&text[last..start]);
        let value = match name {
            "alertname" => Some(alert.name()),
            "fingerprint" => Some(alert.fingerprint.as_str()),
            "status" => Some(alert.status.as_str()),
            _ => match name.split_once('.') {
                Some(("labels", key)) => alert.labels.get(key).map(String::as_str),
                Some(("annotations", key)) => alert.annotations.get(key).map(String::as_str),
                _ => None,
            },
        };
        put(
            value.ok_or_else(|| TemplateError::Missing(name.to_string()))?,
            &mut out,
        );
        last = end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use proxflow_schemas::alert::AlertStatus;

    use super::*;

    pub(crate) fn alert(labels: &[(&str, &str)]) -> AlertReceived {
        AlertReceived {
            fingerprint: "f00d".into(),
            status: AlertStatus::Firing,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::from([("summary".into(), "down".into())]),
            starts_at: Utc::now(),
            ends_at: None,
            generator_url: String::new(),
            receiver: "proxflow".into(),
            group: String::new(),
            external_url: String::new(),
            received_by: "token:am".into(),
            received_at: Utc::now(),
        }
    }

    #[test]
    fn placeholders_fill_from_the_alert_and_missing_ones_are_errors() {
        let a = alert(&[("alertname", "VMDown"), ("vmid", "104")]);
        assert_eq!(render("vm/{labels.vmid}", &a).unwrap(), "vm/104");
        assert_eq!(
            render(
                "{alertname} {annotations.summary} {fingerprint} {status}",
                &a
            )
            .unwrap(),
            "VMDown down f00d firing"
        );
        assert_eq!(
            render("vm/{labels.node}", &a),
            Err(TemplateError::Missing("labels.node".into()))
        );
        assert!(matches!(
            check("vm/{label.vmid}"),
            Err(TemplateError::Unknown(_))
        ));
        assert!(matches!(
            check("vm/{labels.vmid"),
            Err(TemplateError::Unknown(_))
        ));
        assert!(check("plain text").is_ok());
    }

    #[test]
    fn a_label_in_a_url_stays_inside_its_segment() {
        let a = alert(&[("alertname", "VMDown"), ("host", "x/../../admin?q=1#")]);
        let url = render_url("http://pager.example/hooks/{labels.host}/page", &a).unwrap();
        assert_eq!(
            url,
            "http://pager.example/hooks/x%2F..%2F..%2Fadmin%3Fq%3D1%23/page"
        );
        assert!(!url.contains(['?', '#']), "{url}");
        // The plain renderer (targets, job names) is unchanged.
        assert_eq!(render("{labels.host}", &a).unwrap(), "x/../../admin?q=1#");
    }
}
