//! The tests, one module per concern of issue 2's "How it is shown": API flows (`api`),
//! bad input (`bad_input`, `connections`, `concurrency`), crash safety (`crash`), real
//! clients (`skopeo`, `oras`), and the command line (`cli`); issue 4's deduplication
//! (`dedupe`) and `subPaths` stores (`subpaths`); issue 5's garbage collection and retention
//! (`gc`) and scrub (`scrub`); issue 10's hostile HTTP at the front end (`hostile_http`); issue
//! 13's S3 storage (`s3` and upload sessions in the bucket, `s3_uploads`, against moto from
//! `scripts/s3-services.sh`; `s3_credentials` against s3s-fs, which checks signatures;
//! `s3_faults`, against an s3s-fs of its own that it stops, stalls and starts again, and the
//! presigned redirect; the skopeo, oras, dedupe, gc and scrub flows also run on S3 in their
//! own modules, through `util::store`); issue 15's stop on SIGTERM (`lifecycle`).

mod api;
mod bad_input;
mod cli;
mod concurrency;
mod connections;
mod crash;
mod dedupe;
mod first_hour;
mod gc;
mod hostile_http;
mod hostile_store;
mod leftovers;
mod lifecycle;
mod oras;
mod s3;
mod s3_credentials;
mod s3_faults;
mod s3_uploads;
mod scrub;
mod several_instances;
mod skopeo;
mod subpaths;
