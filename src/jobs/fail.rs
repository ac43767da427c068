//! `fail`: always fails with its message, to exercise retries. Spec: `{"message": "…"}`.

use super::{only_fields, str_field, JobContext, JobError, JobKind};
use futures::future::BoxFuture;
use serde_json::Value;

pub struct Fail;

impl JobKind for Fail {
    fn name(&self) -> &'static str {
        "fail"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["message"])?;
        str_field(spec, "message")?;
        Ok(())
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let message = str_field(spec, "message")?.unwrap_or("failed on purpose");
            ctx.log(&format!("about to fail: {message}"));
            Err(JobError::Failed(message.to_owned()))
        })
    }
}
