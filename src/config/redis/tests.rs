//! `cacheDriver` for Redis as zot's configs write it: the URL forms, the individual keys,
//! defaults, and errors that name the key.

use super::*;
use crate::config::{CacheBackend, Config};

fn config(store: serde_json::Value) -> Result<Config, String> {
    let text = serde_json::json!({
        "storage": store,
        "http": {"address": "127.0.0.1", "port": "5000"}
    });
    Config::parse(&text.to_string(), "test.json").map_err(|e| e.to_string())
}

fn redis(driver: serde_json::Value) -> Result<RedisSettings, String> {
    let config = config(serde_json::json!({
        "rootDirectory": "/tmp/zot",
        "remoteCache": true,
        "cacheDriver": driver,
    }))?;
    match config.storage.default.cache {
        CacheBackend::Redis(settings) => Ok(*settings),
        other => panic!("{other:?}"),
    }
}

fn addr(host: &str, port: u16) -> Addr {
    Addr {
        host: host.into(),
        port,
    }
}

#[test]
fn zots_example_is_a_single_server_with_go_redis_defaults() {
    let s = redis(serde_json::json!({
        "name": "redis", "url": "redis://localhost:6379", "keyprefix": "zot"
    }))
    .unwrap();
    let expected = RedisOptions::new(Topology::Single(addr("localhost", 6379)));
    assert_eq!(s.options, expected);
    assert_eq!(s.options.key_prefix, "zot");
    assert_eq!(s.options.max_retries, 3);
    assert_eq!(s.options.read_timeout, Duration::from_secs(3));
    assert!(s.logged_only.is_empty());
    // Without keyprefix: zot's default.
    let s = redis(serde_json::json!({"name": "redis", "url": "redis://h"})).unwrap();
    assert_eq!(s.options.key_prefix, "zot");
    assert_eq!(s.options.topology, Topology::Single(addr("h", 6379)));
}

#[test]
fn a_url_carries_credentials_database_tls_and_options() {
    let s = redis(serde_json::json!({
        "name": "redis",
        "url": "rediss://user:p%40ss@cache.example:6380/2?dial_timeout=2&read_timeout=250ms\
                &max_retries=-1&pool_size=7&protocol=3&client_name=berth&skip_verify=true\
                &min_idle_conns=2",
        "keyprefix": "mine"
    }))
    .unwrap();
    let o = &s.options;
    assert_eq!(o.topology, Topology::Single(addr("cache.example", 6380)));
    assert_eq!(o.username.as_deref(), Some("user"));
    assert_eq!(o.password, Some(Secret("p@ss".into())));
    assert_eq!(o.db, 2);
    assert_eq!(o.tls, Some(false), "TLS without verifying (skip_verify)");
    assert_eq!(o.dial_timeout, Duration::from_secs(2), "whole seconds");
    assert_eq!(o.read_timeout, Duration::from_millis(250));
    assert_eq!(o.max_retries, 0, "-1: no retries");
    assert_eq!(o.pool_size, 7);
    assert!(o.resp3);
    assert_eq!(o.client_name.as_deref(), Some("berth"));
    assert_eq!(o.key_prefix, "mine");
    assert_eq!(s.logged_only, ["min_idle_conns=2"]);
    assert!(
        !format!("{o:?}").contains("p@ss"),
        "the password is never printed"
    );
}

#[test]
fn a_url_naming_addrs_is_a_cluster() {
    let s = redis(serde_json::json!({
        "name": "redis",
        "url": "redis://user:password@host1:6379?addr=host2:6379&addr=host3:7000&read_only=true&max_redirects=5"
    }))
    .unwrap();
    assert_eq!(
        s.options.topology,
        Topology::Cluster(vec![
            addr("host1", 6379),
            addr("host2", 6379),
            addr("host3", 7000)
        ])
    );
    assert!(s.options.read_only);
    assert_eq!(s.options.max_redirects, 5);
}

#[test]
fn a_url_refuses_what_go_redis_refuses() {
    let e =
        redis(serde_json::json!({"name": "redis", "url": "redis://h?master_name=m"})).unwrap_err();
    assert!(e.contains("storage.cacheDriver.url?master_name: "), "{e}");
    assert!(e.contains("individual keys"), "{e}");
    // Cluster options only in a cluster URL.
    let e =
        redis(serde_json::json!({"name": "redis", "url": "redis://h?read_only=true"})).unwrap_err();
    assert!(e.contains("storage.cacheDriver.url?read_only: "), "{e}");
    let e =
        redis(serde_json::json!({"name": "redis", "url": "redis://h?pool_size=many"})).unwrap_err();
    assert!(e.contains("storage.cacheDriver.url?pool_size: "), "{e}");
    let e = redis(serde_json::json!({"name": "redis", "url": "http://h"})).unwrap_err();
    assert!(e.contains("storage.cacheDriver.url: "), "{e}");
    let e = redis(serde_json::json!({"name": "redis", "url": "redis://h/zero"})).unwrap_err();
    assert!(e.contains("storage.cacheDriver.url: "), "{e}");
}

#[test]
fn individual_keys_as_zots_table_writes_them() {
    let s = redis(serde_json::json!({
        "name": "redis",
        "keyprefix": "zot",
        "addr": ["host1:6379", "host2:6379", "host3:6379"],
        "client_name": "client",
        "db": 1,
        "protocol": 3,
        "username": "user1",
        "password": "pass1",
        "sentinel_username": "user2",
        "sentinel_password": "pass2",
        "max_retries": 3,
        "min_retry_backoff": "5s",
        "max_retry_backoff": "5s",
        "dial_timeout": "5s",
        "read_timeout": "5s",
        "write_timeout": "5s",
        "context_timeout_enabled": false,
        "pool_fifo": false,
        "pool_size": 3,
        "pool_timeout": "5s",
        "min_idle_conns": 1,
        "max_idle_conns": 3,
        "max_active_conns": 3,
        "conn_max_idle_time": "5s",
        "conn_max_lifetime": "5s",
        "max_redirects": 3,
        "read_only": false,
        "route_by_latency": false,
        "route_randomly": false,
        "master_name": "zotmeta",
        "disable_identity": false,
        "identity_suffix": "zotmeta",
        "unstable_resp3": false
    }))
    .unwrap();
    let o = &s.options;
    assert_eq!(
        o.topology,
        Topology::Sentinel {
            master_name: "zotmeta".into(),
            sentinels: vec![
                addr("host1", 6379),
                addr("host2", 6379),
                addr("host3", 6379)
            ],
            username: Some("user2".into()),
            password: Some(Secret("pass2".into())),
        },
        "master_name: a sentinel setup over the addrs"
    );
    assert_eq!(o.db, 1);
    assert!(o.resp3);
    assert_eq!(o.username.as_deref(), Some("user1"));
    assert_eq!(o.dial_timeout, Duration::from_secs(5));
    assert_eq!(o.pool_size, 3);
    assert_eq!(o.max_idle_conns, 3);
    assert_eq!(o.conn_max_lifetime, Some(Duration::from_secs(5)));
    let mut logged = s.logged_only.clone();
    logged.sort();
    assert_eq!(
        logged,
        [
            "context_timeout_enabled=false",
            "disable_identity=false",
            "identity_suffix=zotmeta",
            "min_idle_conns=1",
            "route_by_latency=false",
            "route_randomly=false",
            "unstable_resp3=false"
        ]
    );
    // Without master_name, several addrs are a cluster, one a single server; strings for
    // numbers, as zot's casts take them.
    let s = redis(serde_json::json!({
        "name": "redis", "addr": ["a:1", "b:2"], "pool_size": "4", "read_only": "true"
    }))
    .unwrap();
    assert_eq!(
        s.options.topology,
        Topology::Cluster(vec![addr("a", 1), addr("b", 2)])
    );
    assert_eq!(s.options.pool_size, 4);
    assert!(s.options.read_only);
    let s = redis(serde_json::json!({"name": "redis", "addr": "a"})).unwrap();
    assert_eq!(s.options.topology, Topology::Single(addr("a", 6379)));
    let s = redis(serde_json::json!({"name": "redis"})).unwrap();
    assert_eq!(
        s.options.topology,
        Topology::Single(addr("localhost", 6379))
    );
}

#[test]
fn bad_values_and_unknown_keys_name_the_key() {
    for (key, value) in [
        ("db", serde_json::json!("one")),
        ("protocol", serde_json::json!(4)),
        ("dial_timeout", serde_json::json!("5 parsecs")),
        ("dial_timeout", serde_json::json!(5)),
        ("pool_size", serde_json::json!(-1)),
        ("pool_fifo", serde_json::json!("maybe")),
        ("addr", serde_json::json!(["host:port"])),
        ("max_retries", serde_json::json!(-2)),
        ("password", serde_json::json!({"a": 1})),
        ("keyprefix", serde_json::json!("")),
        ("poolsize", serde_json::json!(3)),
    ] {
        let mut driver = serde_json::json!({"name": "redis"});
        driver[key] = value.clone();
        let e = redis(driver).unwrap_err();
        assert!(
            e.contains(&format!("storage.cacheDriver.{key}: ")),
            "{key} = {value}: {e}"
        );
    }
}

#[test]
fn remote_cache_and_cache_driver_go_together() {
    let store = |remote: Option<bool>, driver: Option<serde_json::Value>| {
        let mut store = serde_json::json!({"rootDirectory": "/tmp/zot"});
        if let Some(remote) = remote {
            store["remoteCache"] = remote.into();
        }
        if let Some(driver) = driver {
            store["cacheDriver"] = driver;
        }
        config(store).map(|c| c.storage.default.cache)
    };
    let e = store(Some(true), None).unwrap_err();
    assert!(e.contains("storage.cacheDriver: required"), "{e}");
    let e = store(None, Some(serde_json::json!({"name": "redis"}))).unwrap_err();
    assert!(e.contains("storage.remoteCache: true"), "{e}");
    let e = store(Some(true), Some(serde_json::json!({"name": "memcached"}))).unwrap_err();
    assert!(e.contains("storage.cacheDriver.name: "), "{e}");
    assert_eq!(store(Some(false), None).unwrap(), CacheBackend::Lmdb);
    assert_eq!(
        store(None, Some(serde_json::json!({"name": "boltdb"}))).unwrap(),
        CacheBackend::Lmdb
    );
    // A sub-path store reads its own.
    let c = config(serde_json::json!({
        "rootDirectory": "/tmp/zot",
        "subPaths": {"/a": {
            "rootDirectory": "/tmp/a",
            "remoteCache": true,
            "cacheDriver": {"name": "redis", "url": "redis://h", "pool_size": 3}
        }}
    }))
    .unwrap();
    assert!(matches!(
        c.storage.sub_paths[0].1.cache,
        CacheBackend::Redis(_)
    ));
}
