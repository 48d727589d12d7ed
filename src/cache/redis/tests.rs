//! The Redis cache against the servers `scripts/redis-services.sh` starts: the conformance
//! suites on a single server, a cluster and a sentinel setup (each test under a key prefix of
//! its own, so it starts empty), round trips per call, and what a Redis that does not answer
//! or is not up yet does to calls.

use super::*;
use crate::cache::conformance;
use crate::test_services::ServiceEnv;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

fn env() -> ServiceEnv {
    ServiceEnv::load(".redis-services", "scripts/redis-services.sh")
}

fn addr(text: &str) -> Addr {
    let (host, port) = text.rsplit_once(':').expect("host:port");
    Addr {
        host: host.into(),
        port: port.parse().expect("a port"),
    }
}

/// Options for `topology`, under a key prefix no other test uses.
fn fresh(topology: Topology) -> RedisOptions {
    RedisOptions {
        key_prefix: format!("berth-test-{}", uuid::Uuid::new_v4().simple()),
        ..RedisOptions::new(topology)
    }
}

fn single() -> Topology {
    let url = env().require("BERTH_REDIS_URL");
    Topology::Single(addr(url.strip_prefix("redis://").expect("a redis:// URL")))
}

fn cluster() -> Topology {
    let addrs = env().require("BERTH_REDIS_CLUSTER_ADDRS");
    Topology::Cluster(addrs.split(',').map(addr).collect())
}

fn sentinel() -> Topology {
    let env = env();
    Topology::Sentinel {
        master_name: env.require("BERTH_REDIS_MASTER_NAME"),
        sentinels: vec![addr(&env.require("BERTH_REDIS_SENTINEL_ADDR"))],
        username: None,
        password: None,
    }
}

/// A single server on 127.0.0.1:`port`.
fn loopback(port: u16) -> Topology {
    Topology::Single(Addr {
        host: "127.0.0.1".into(),
        port,
    })
}

/// A client of the single test server, under a fresh key prefix (the store suite's cache).
pub(crate) fn fresh_single() -> Arc<Redis> {
    Arc::new(Redis::new(fresh(single())).unwrap())
}

/// One test per topology x suite, each over one client under a fresh prefix.
macro_rules! conformance {
    ($($topology:ident),* ; $suites:tt) => {
        $( conformance!(@one $topology $suites); )*
    };
    (@one $topology:ident [$($suite:ident),*]) => {
        mod $topology {
            use super::*;

            fn open() -> impl Fn(&Namespace) -> RedisCache {
                let redis = Arc::new(Redis::new(fresh(super::$topology())).unwrap());
                move |ns| redis.namespace(ns)
            }

            $(
                #[test]
                fn $suite() {
                    conformance::$suite(open());
                }
            )*
        }
    };
}

conformance!(single, cluster, sentinel; [dedupe_index, usage_log, markers, leases]);

fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

fn path(s: &str) -> StoragePath {
    StoragePath::from_components(s.split('/')).unwrap()
}

/// What a landing blob costs, and a batch: one round trip each (on a cluster, one per slot a
/// batch reaches).
#[test]
fn round_trips_per_call() {
    for topology in [single(), cluster()] {
        let clustered = matches!(topology, Topology::Cluster(_));
        let redis = Arc::new(Redis::new(fresh(topology)).unwrap());
        let cache = redis.namespace(&Namespace::new("storage"));
        let repo: RepoName = "app".parse().unwrap();
        // The first call of a script may load it (EVAL after NOSCRIPT).
        cache.add(&digest(0), &path("warm")).unwrap();
        cache
            .record_pushes(&[(repo.clone(), "warm".parse().unwrap(), SystemTime::now())])
            .unwrap();
        let trips = |call: &dyn Fn()| {
            let before = redis.round_trips();
            call();
            redis.round_trips() - before
        };
        assert_eq!(
            trips(&|| assert_eq!(cache.add(&digest(1), &path("a")).unwrap(), None)),
            1,
            "a new blob"
        );
        assert_eq!(
            trips(&|| assert_eq!(cache.add(&digest(1), &path("b")).unwrap(), Some(path("a")))),
            1,
            "a known blob"
        );
        let records: Vec<_> = (10..20).map(|n| (digest(n), path("r"))).collect();
        let batch = trips(&|| cache.put_many(&records).unwrap());
        if clustered {
            assert!((1..=10).contains(&batch), "{batch}: one per slot at most");
        } else {
            assert_eq!(batch, 1, "a batch is one pipeline");
        }
        let pushes: Vec<_> = (0..5)
            .map(|n| {
                (
                    repo.clone(),
                    format!("v{n}").parse().unwrap(),
                    SystemTime::now(),
                )
            })
            .collect();
        assert_eq!(
            trips(&|| cache.record_pushes(&pushes).unwrap()),
            1,
            "one repository's usage: one script call"
        );
    }
}

/// A server that takes connections and never answers: a call fails `Unavailable` once the
/// read time-out passes, after its retries, instead of hanging a request worker.
#[test]
fn a_silent_server_times_out_as_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = RedisOptions {
        read_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(200),
        dial_timeout: Duration::from_millis(200),
        max_retries: 1,
        ..fresh(loopback(port))
    };
    let redis = Arc::new(Redis::new(options).unwrap());
    let cache = redis.namespace(&Namespace::new("storage"));
    let started = Instant::now();
    let e = cache.add(&digest(1), &path("a")).unwrap_err();
    assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
    // Two tries of 200 ms each and a back-off: well under the default 3 s of one.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

/// A redis-server of the test's own on 127.0.0.1:`port`, ended on drop.
struct OwnServer(Child);

impl OwnServer {
    fn start(port: u16) -> OwnServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/redis-services.sh installs it)");
        OwnServer(child)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cache whose server is not up when it is made fails `Unavailable` (the store goes on
/// without it) and works once the server is up, with no new client.
#[test]
fn a_server_down_at_start_is_used_once_up() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = RedisOptions {
        max_retries: 0,
        ..fresh(loopback(port))
    };
    let redis = Arc::new(Redis::new(options).unwrap());
    let cache = redis.namespace(&Namespace::new("storage"));
    let e = cache.put(&digest(1), &path("a")).unwrap_err();
    assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
    let _server = OwnServer::start(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.put(&digest(1), &path("a")).is_err() {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cache.paths(&digest(1)).unwrap(), [path("a")]);
}

/// Two clients (two berth processes) adding one new digest at once: one is the original.
#[test]
fn two_clients_agree_on_the_original() {
    let options = fresh(single());
    let first = Arc::new(Redis::new(options.clone()).unwrap());
    let second = Arc::new(Redis::new(options).unwrap());
    let ns = Namespace::new("storage");
    for round in 0..20 {
        let d = digest(100 + round);
        let answers = std::thread::scope(|s| {
            let a = s.spawn(|| first.namespace(&ns).add(&d, &path("one")).unwrap());
            let b = s.spawn(|| second.namespace(&ns).add(&d, &path("two")).unwrap());
            [a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(
            answers.iter().filter(|a| a.is_none()).count(),
            1,
            "{answers:?}"
        );
    }
}
