//! A PostgreSQL database of each test's own on the shared server
//! (`POSTBOX_TEST_DATABASE_URL`, default 127.0.0.1:5432), created empty and
//! dropped when the test ends, pass or fail, so that tests run in parallel
//! without seeing each other's tables, locks or notifications.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use postbox_relay::{DatabaseConfig, Schema, TableName};
use tokio_postgres::Client;

/// The shared server when `POSTBOX_TEST_DATABASE_URL` does not say otherwise.
pub const SHARED_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of the shared server's maintenance database.
pub fn shared_url() -> String {
    std::env::var("POSTBOX_TEST_DATABASE_URL").unwrap_or_else(|_| SHARED_URL_DEFAULT.into())
}

/// A database of one test's own, dropped (with any sessions still on it) when
/// this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `relay_test_<random>` on the shared server.
    pub async fn create() -> TestDatabase {
        let name = format!("relay_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect_url(&shared_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("cannot create database {name}: {error:?}"));
        let url = with_database(&shared_url(), &name);
        TestDatabase { name, url }
    }

    /// Creates a test database with the default outbox schema.
    pub async fn initialised() -> TestDatabase {
        let db = TestDatabase::create().await;
        let mut client = db.connect().await;
        Schema::new(TableName::default())
            .apply(&mut client)
            .await
            .expect("init");
        db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new session on this database, through the relay's own connector.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on a future:
        // drop the database from a thread with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                let admin = connect_url(&shared_url()).await;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cannot drop test database {}: {error:?}", self.name),
            Err(_) => eprintln!(
                "cannot drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// A session on `url`, through the relay's own connector.
pub async fn connect_url(url: &str) -> Client {
    DatabaseConfig::from_url(url)
        .expect("a valid test database URL")
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test PostgreSQL: {error}"))
}

/// `url` with its database replaced by `database`: the path of a
/// `postgres://` URL, or a `dbname=` appended to a key=value string.
pub fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={database}");
    };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = scheme_end + 3;
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}
