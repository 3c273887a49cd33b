//! Span export over OTLP/HTTP for `outbox run` (feature `opentelemetry`).
//!
//! On when `[telemetry] otlp_endpoint` is set or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variable is, and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise; else
//! nothing is set up. The exporter sends the relay's spans (target `outbox*`: the `send`
//! span of every event, child of the trace its writer stored) in batches from a thread of
//! its own; `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and the batch
//! variables (`OTEL_BSP_*`) apply as the OpenTelemetry SDK reads them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use outbox_core::redact_url;
use tracing_opentelemetry::OpenTelemetryLayer;

use crate::config::TelemetryConfig;

/// The running exporter; [`Exporter::shutdown`] sends what is still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The service name when neither the config nor `OTEL_SERVICE_NAME` gives one.
const DEFAULT_SERVICE_NAME: &str = "outbox-relay";

/// Where the settings come from: the config's `[telemetry]` and the environment.
struct Settings<'a> {
    config: Option<&'a TelemetryConfig>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Settings<'_> {
    fn env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    fn enabled(&self) -> bool {
        let off = |name: &str, value: &str| {
            self.env(name)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        if off("OTEL_SDK_DISABLED", "true") || off("OTEL_TRACES_EXPORTER", "none") {
            return false;
        }
        self.config.is_some_and(|c| c.otlp_endpoint.is_some())
            || self.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || self.env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    }

    fn protocol(&self) -> Result<Protocol, String> {
        let (value, origin) = match self.config.and_then(|c| c.protocol.clone()) {
            Some(p) => (p, "[telemetry] protocol"),
            None => match self
                .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .map(|p| (p, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
                .or_else(|| {
                    self.env("OTEL_EXPORTER_OTLP_PROTOCOL")
                        .map(|p| (p, "OTEL_EXPORTER_OTLP_PROTOCOL"))
                }) {
                Some(found) => found,
                None => return Ok(Protocol::HttpBinary),
            },
        };
        match value.trim() {
            "http/protobuf" => Ok(Protocol::HttpBinary),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(format!(
                "{origin} = {other:?}: the relay exports over OTLP/HTTP, `http/protobuf` (the default) or `http/json` (a collector's OTLP/HTTP port is usually 4318)"
            )),
        }
    }

    /// The traces URL from `[telemetry] otlp_endpoint` (a base URL, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`), or `None` to let the exporter read the environment.
    fn endpoint(&self) -> Result<Option<String>, String> {
        let Some(base) = self.config.and_then(|c| c.otlp_endpoint.as_deref()) else {
            return Ok(None);
        };
        let base = base.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "[telemetry] otlp_endpoint = {:?}: expected an http:// or https:// URL such as http://127.0.0.1:4318",
                redact_url(base)
            ));
        }
        if base.starts_with("https://") {
            return Err(format!(
                "[telemetry] otlp_endpoint = {:?}: this build exports over plain HTTP only; put the collector on a local or sidecar port",
                redact_url(base)
            ));
        }
        Ok(Some(format!("{}/v1/traces", base.trim_end_matches('/'))))
    }

    fn service_name(&self) -> String {
        self.config
            .and_then(|c| c.service_name.clone())
            .or_else(|| self.env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())
    }
}

impl Exporter {
    /// Starts the exporter if the config or the environment (`env`, e.g. a lookup of
    /// `std::env::var`) asks for one. Call it outside an async runtime: the exporter's
    /// HTTP client runs on a thread of its own.
    pub fn start(
        config: Option<&TelemetryConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Exporter>, String> {
        let settings = Settings { config, env };
        if !settings.enabled() {
            return Ok(None);
        }
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(settings.protocol()?);
        if let Some(endpoint) = settings.endpoint()? {
            builder = builder.with_endpoint(endpoint);
        }
        let exporter = builder.build().map_err(|e| format!("OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("outbox-relay");
        Ok(Some(Exporter { provider, tracer }))
    }

    /// The `tracing` layer that records spans into this exporter.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Sends the spans still buffered and stops. Call it outside an async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("outbox: exporting the last spans failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(
        config: Option<&'a TelemetryConfig>,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Settings<'a> {
        Settings { config, env }
    }

    #[test]
    fn off_unless_an_endpoint_is_given() {
        let none = |_: &str| None;
        assert!(!settings(None, &none).enabled());
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318/".to_owned()),
            ..TelemetryConfig::default()
        };
        let s = settings(Some(&config), &none);
        assert!(s.enabled());
        assert_eq!(
            s.endpoint().expect("endpoint").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let env =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".to_owned());
        assert!(settings(None, &env).enabled());
        let disabled = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318".to_owned()),
            "OTEL_SDK_DISABLED" => Some("TRUE".to_owned()),
            _ => None,
        };
        assert!(!settings(None, &disabled).enabled());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let none = |_: &str| None;
        let config = TelemetryConfig {
            otlp_endpoint: Some("collector:4318".to_owned()),
            protocol: Some("grpc".to_owned()),
            ..TelemetryConfig::default()
        };
        let s = settings(Some(&config), &none);
        let e = s.protocol().expect_err("grpc");
        assert!(
            e.contains("[telemetry] protocol") && e.contains("grpc"),
            "{e}"
        );
        let e = s.endpoint().expect_err("no scheme");
        assert!(e.contains("otlp_endpoint"), "{e}");
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_owned());
        assert!(matches!(
            settings(None, &env).protocol(),
            Ok(Protocol::HttpJson)
        ));
        assert_eq!(settings(None, &none).service_name(), "outbox-relay");
    }
}
