//! The throwaway PostgreSQL the relay's crash tests stand on: it starts on a
//! port of its own, keeps committed rows across a kill (immediate stop) and a
//! restart, and refuses connections while it is down.

use postbox_tests::postgres::ThrowawayPostgres;
use tokio_postgres::NoTls;

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throwaway_cluster_survives_a_kill_and_a_restart() {
    let mut pg = ThrowawayPostgres::start();
    let client = connect(&pg.url()).await.expect("connect");
    client
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2);")
        .await
        .expect("create and insert");
    drop(client);

    pg.kill();
    assert!(connect(&pg.url()).await.is_err(), "down after the kill");
    pg.start_server();
    let client = connect(&pg.url()).await.expect("connect after the kill");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "committed rows survive an immediate stop");
    drop(client);

    pg.restart();
    let client = connect(&pg.url()).await.expect("connect after the restart");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
    assert_ne!(pg.port(), 5432, "never the shared server's port");
}
