"""The PostgreSQL of tests/servers.py: started on a free loopback port, what it committed is
still there after a kill and a start on the same port, and its folder goes on close."""

from __future__ import annotations

import pytest

from tests.servers import PostgresServer, ServerNotAvailable


def test_postgres_server_keeps_commits_across_a_kill() -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        server = PostgresServer()
    except ServerNotAvailable as missing:
        pytest.skip(str(missing))
    with server as pg:
        url = pg.create_database("vance")
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")
            cur.execute("INSERT INTO t VALUES (1)")
        conn.close()
        port = pg.port
        pg.kill()
        assert not pg.running
        pg.start()
        assert pg.port == port
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM t")
            assert cur.fetchall() == [(1,)]
        conn.close()
        folder = pg.directory
    assert not folder.exists()
