//! JSON log lines: one object per line with `time`, `level`, `target`, `message`, the event's
//! own fields, and the correlation ids (`trace_id`, `span_id`, `case_id`) of the spans it
//! happened in, all flat at the top level so log tools can index them.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Span fields copied onto every line logged inside the span.
pub(super) const CORRELATION_FIELDS: [&str; 3] = ["trace_id", "span_id", "case_id"];

/// The correlation ids a span has recorded so far (kept in its extensions).
#[derive(Clone, Debug, Default)]
struct Ids([Option<String>; 3]);

impl Visit for Ids {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(i) = CORRELATION_FIELDS.iter().position(|f| *f == field.name()) {
            self.0[i] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%id` arrives here as Display-through-Debug, without quotes.
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Keeps each span's correlation ids in its extensions, where the formatter finds them. (A
/// formatter must not look at the current span itself: the dispatcher is busy with the event.)
#[derive(Clone, Copy, Debug)]
pub(super) struct Correlation;

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Correlation {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut ids = Ids::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(ids) = ext.get_mut::<Ids>() {
                values.record(ids);
            }
        }
    }
}

/// The event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// The JSON line format.
#[derive(Clone, Copy, Debug)]
pub(super) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        line.insert("time".into(), Value::from(time));
        let meta = event.metadata();
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        event.record(&mut Fields(&mut line));
        line.entry("message").or_insert_with(|| Value::from(""));
        if let Some(scope) = ctx.event_scope() {
            // Innermost first: a step's case id beats its request's.
            for span in scope {
                if let Some(ids) = span.extensions().get::<Ids>() {
                    for (name, value) in CORRELATION_FIELDS.iter().zip(&ids.0) {
                        if let Some(v) = value {
                            line.entry(*name).or_insert_with(|| Value::from(v.as_str()));
                        }
                    }
                }
                line.entry("span")
                    .or_insert_with(|| Value::from(span.name()));
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_flat_json_objects_with_the_spans_ids() {
        let buf = Buffer::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry().with(Correlation).with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "grpc.request",
                trace_id = tracing::field::Empty,
                case_id = tracing::field::Empty
            );
            outer.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            let _o = outer.enter();
            tracing::info!(code = 0_i64, "request finished");
            let inner = tracing::info_span!("saga.step", case_id = %"c-1");
            let _i = inner.enter();
            tracing::warn!(attempt = 2_u64, ok = false, "step failed");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["message"], "request finished");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(first["code"], 0);
        assert!(first.get("case_id").is_none(), "{first}");
        assert!(first["time"].as_str().is_some_and(|t| t.contains('T')));
        assert!(first["target"].as_str().is_some());
        let second = &lines[1];
        assert_eq!(second["case_id"], "c-1", "found on the inner span");
        assert_eq!(
            second["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "found on the outer span"
        );
        assert_eq!(second["span"], "saga.step");
        assert_eq!(
            (second["attempt"].as_u64(), second["ok"].as_bool()),
            (Some(2), Some(false))
        );
    }
}
