//! Heavy calls run on the libuv thread pool and return Promises.
//!
//! Each kind of result has its own task type (the TypeScript declaration of a Promise names the
//! value it resolves to); [`task!`] declares one. A task runs a closure over arguments already
//! checked and copied on the JavaScript thread; a panic inside it rejects the promise with a
//! `Panic` error, and an error rejects it with the JavaScript error of its kind.

/// Declares a task type `$name` that resolves to the JavaScript value of the given type.
macro_rules! task {
    ($(#[$doc:meta])* $name:ident => $($js:tt)+) => {
        $(#[$doc])*
        pub struct $name(
            Option<Box<dyn FnOnce() -> $crate::error::Result<$($js)+> + Send>>,
        );

        impl $name {
            /// A promise of what `f` returns, computed off the JavaScript thread.
            #[allow(dead_code, reason = "not every task type is made in every build")]
            pub(crate) fn spawn(
                f: impl FnOnce() -> $crate::error::Result<$($js)+> + Send + 'static,
            ) -> napi::bindgen_prelude::AsyncTask<Self> {
                napi::bindgen_prelude::AsyncTask::new(Self(Some(Box::new(f))))
            }
        }

        #[napi_derive::napi]
        impl napi::Task for $name {
            type Output = $crate::error::Result<$($js)+>;
            type JsValue = $($js)+;

            fn compute(&mut self) -> napi::Result<Self::Output> {
                Ok(match self.0.take() {
                    Some(f) => $crate::error::guard(f),
                    None => Err($crate::error::closed("this task")),
                })
            }

            fn resolve(&mut self, env: napi::Env, out: Self::Output) -> napi::Result<$($js)+> {
                $crate::error::settle(&env, out)
            }
        }
    };
}

pub(crate) use task;

task!(
    /// Resolves to nothing once the work is done.
    VoidTask => ()
);
task!(
    /// Resolves to a number.
    NumberTask => f64
);
task!(
    /// Resolves to a string.
    StringTask => String
);
task!(
    /// Resolves to a list of strings.
    StringListTask => Vec<String>
);
task!(
    /// Resolves to a list of lists of strings.
    StringListsTask => Vec<Vec<String>>
);
task!(
    /// Resolves to a `Float32Array`.
    Float32Task => napi::bindgen_prelude::Float32Array
);
task!(
    /// Resolves to a `Uint16Array`.
    Uint16Task => napi::bindgen_prelude::Uint16Array
);

/// `v` as a count or index: a non-negative integer that a `usize` holds exactly.
pub fn count(name: &str, v: f64) -> crate::error::Result<usize> {
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0) {
        return Err(crate::error::invalid_arg(
            name,
            format!("expected a non-negative integer, found {v}"),
        ));
    }
    Ok(v as usize)
}
