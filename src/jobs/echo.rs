//! `echo`: logs its message and returns it. Spec: `{"message": "…", "lines": N}`.

use super::{only_fields, str_field, u64_field, JobContext, JobError, JobKind};
use futures::future::BoxFuture;
use serde_json::{json, Value};

pub struct Echo;

impl JobKind for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["message", "lines"])?;
        str_field(spec, "message")?;
        u64_field(spec, "lines", 100_000)?;
        Ok(())
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            self.validate(spec)?;
            let message = str_field(spec, "message")?.unwrap_or("");
            for i in 0..u64_field(spec, "lines", 100_000)?.unwrap_or(1) {
                ctx.log(&format!("{message} {i}"));
            }
            Ok(json!({ "message": message }))
        })
    }

    fn in_process_safe(&self) -> bool {
        true
    }
}
