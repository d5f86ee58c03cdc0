"""asyncpg as a masked agent: what it reads through the gateway, printed as JSON.

Run by tests/tests/drivers_python.rs against the gateway and against PostgreSQL
directly; the test compares the two and checks what masking changed. asyncpg speaks
the extended protocol with binary results and introspects every type it has not met
(arrays, enums, composites) with a query over the system catalogs.
"""

import asyncio
import io
import json
import sys

import asyncpg


async def main(dsn: str) -> None:
    out = {}
    conn = await asyncpg.connect(dsn)
    try:
        out["ssns"] = [r["ssn"] for r in await conn.fetch(
            "SELECT ssn FROM accounts ORDER BY id LIMIT 5")]
        out["names_array"] = await conn.fetchval(
            "SELECT array_agg(full_name ORDER BY id) FROM accounts WHERE id <= 3")
        # Values no rule names, computed into a binary text[]: scanned element by
        # element (a masked column itself may not go through array_agg at all).
        out["ssn_array"] = await conn.fetchval(
            "SELECT array_agg(s ORDER BY s) FROM (VALUES ('485-58-2913'), ('note')) v(s)")

        await conn.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        await conn.execute("CREATE TYPE pair AS (label text, n int)")
        await conn.execute("CREATE DOMAIN tag AS text CHECK (VALUE <> '')")
        out["enum"] = await conn.fetchval("SELECT 'ok'::mood")
        out["enum_param"] = await conn.fetchval("SELECT $1::mood", "sad")
        out["enum_array"] = await conn.fetchval("SELECT ARRAY['ok', 'sad']::mood[]")
        out["composite"] = list(await conn.fetchval("SELECT ROW('x', 1)::pair"))
        out["composite_param"] = list(await conn.fetchval(
            "SELECT $1::pair", ("y", 2)))
        out["domain"] = await conn.fetchval("SELECT 'hello'::tag")
        out["range"] = str(await conn.fetchval("SELECT int4range(1, 5)"))
        # A composite built from a masked column: masked inside, or refused.
        try:
            out["composite_of_ssn"] = list(await conn.fetchval(
                "SELECT ROW(ssn, 1)::pair FROM accounts WHERE id = 1"))
        except asyncpg.PostgresError as e:
            out["composite_of_ssn"] = "error " + e.sqlstate

        buf = io.BytesIO()
        await conn.copy_from_query(
            "SELECT id, ssn FROM accounts WHERE id <= 5 ORDER BY id", output=buf)
        out["copy_from_query"] = buf.getvalue().decode()

        async with conn.transaction():
            await conn.execute("CREATE TABLE fresh (id int, card_number text)")
            await conn.execute(
                "INSERT INTO fresh VALUES (1, '4111 1111 1111 1111')")
            out["fresh_in_transaction"] = await conn.fetchval(
                "SELECT card_number AS c FROM fresh")
        out["fresh_after_commit"] = await conn.fetchval(
            "SELECT card_number AS c FROM fresh")

        heard = asyncio.get_running_loop().create_future()
        await conn.add_listener(
            "ch", lambda c, pid, channel, payload: heard.set_result((pid, payload)))
        await conn.execute("NOTIFY ch, 'hi'")
        pid, payload = await asyncio.wait_for(heard, 10)
        out["notification_pid_is_own"] = pid == conn.get_server_pid()
        out["notification_payload"] = payload
        out["backend_pid_is_own"] = (
            await conn.fetchval("SELECT pg_backend_pid()") == conn.get_server_pid())
    finally:
        for ddl in ("DROP TABLE IF EXISTS fresh", "DROP TYPE IF EXISTS pair",
                    "DROP TYPE IF EXISTS mood", "DROP DOMAIN IF EXISTS tag"):
            try:
                await conn.execute(ddl)
            except asyncpg.PostgresError:
                pass
        await conn.close()
    # A session may end itself: the server's own answer, whatever it is, both ways.
    victim = await asyncpg.connect(dsn)
    try:
        await victim.fetchval("SELECT pg_terminate_backend(pg_backend_pid())")
        out["terminate_own"] = "returned"
    except asyncpg.PostgresError as e:
        out["terminate_own"] = "error " + e.sqlstate
    except (asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError):
        out["terminate_own"] = "closed"
    finally:
        victim.terminate()
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))
