//! `sleep`: waits, then succeeds. Spec: `{"ms": N}` (at most one hour).

use super::{only_fields, u64_field, JobContext, JobError, JobKind};
use futures::future::BoxFuture;
use serde_json::{json, Value};

pub struct Sleep;

const MAX_MS: u64 = 3_600_000;

impl JobKind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["ms"])?;
        u64_field(spec, "ms", MAX_MS)?;
        Ok(())
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let ms = u64_field(spec, "ms", MAX_MS)?.unwrap_or(1000);
            ctx.log(&format!("sleeping {ms} ms"));
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            ctx.log("awake");
            Ok(json!({ "slept_ms": ms }))
        })
    }

    fn in_process_safe(&self) -> bool {
        true
    }
}
