//! `memhog`: allocates and touches memory, to exercise the container's memory limit.
//! Spec: `{"mb": N}`. Never run in-process.

use super::{only_fields, u64_field, JobContext, JobError, JobKind};
use futures::future::BoxFuture;
use serde_json::{json, Value};

pub struct MemHog;

impl JobKind for MemHog {
    fn name(&self) -> &'static str {
        "memhog"
    }

    fn validate(&self, spec: &Value) -> Result<(), JobError> {
        only_fields(spec, &["mb"])?;
        u64_field(spec, "mb", 64 * 1024)?;
        Ok(())
    }

    fn run<'a>(
        &'a self,
        spec: &'a Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let mb = u64_field(spec, "mb", 64 * 1024)?.unwrap_or(64) as usize;
            let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mb);
            for i in 0..mb {
                // touch every page so the memory is really resident
                chunks.push(vec![(i % 251) as u8 + 1; 1 << 20]);
                if i % 64 == 0 {
                    ctx.log(&format!("holding {i} MiB"));
                }
            }
            let total: usize = chunks.iter().map(|c| c.len()).sum();
            Ok(json!({ "held_mb": total >> 20 }))
        })
    }
}
