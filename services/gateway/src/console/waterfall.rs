//! A trace drawn as a waterfall: one row per span, depth first as `proxflow trace` prints it, each
//! a bar placed on the trace's time axis. Plain HTML and inline widths: no script, no canvas.

use maud::{Markup, html};
use proxflow_runtime::telemetry::recorded::SpanTree;

/// The waterfall of `tree` (not empty).
pub(crate) fn render(tree: &SpanTree) -> Markup {
    let Some((first, last)) = tree.extent() else {
        return html! {};
    };
    let total_us = (last - first).num_microseconds().unwrap_or(i64::MAX).max(1) as f64;
    let visits = tree.walk();
    html! {
        div.mute { (visits.len()) " spans, " (duration(total_us as u64)) " from the first start to the last end" }
        div.wf id="waterfall" {
            @for v in &visits {
                @let s = v.span;
                @let left = ((s.start - first).num_microseconds().unwrap_or(0) as f64 / total_us * 100.0).clamp(0.0, 100.0);
                @let width = (s.duration_us as f64 / total_us * 100.0).clamp(0.0, 100.0 - left);
                @let service = s.attributes.get("proxflow.service").unwrap_or(&s.service);
                div.name style=(format!("padding-left:{}em", v.depth)) title=(s.name) data-span=(s.span_id) data-service=(service) {
                    (s.name) " " span.mute { (service) }
                }
                div.track {
                    div class={"span" @if s.is_error() { " err" }} style=(format!("left:{left:.2}%;width:{width:.2}%")) {}
                    div.dur style=(format!("left:{:.2}%", (left + width).min(88.0))) { (duration(s.duration_us)) }
                }
            }
        }
    }
}

fn duration(us: u64) -> String {
    match us {
        u if u < 1_000 => format!("{u} µs"),
        u if u < 1_000_000 => format!("{:.1} ms", u as f64 / 1e3),
        u => format!("{:.2} s", u as f64 / 1e6),
    }
}
