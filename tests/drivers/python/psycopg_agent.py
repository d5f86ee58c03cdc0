"""psycopg 3 as a masked agent, printed as JSON (see tests/tests/drivers_python.rs).

psycopg opens a transaction before the first statement unless told otherwise, so the
tables an agent creates are read inside that open transaction; its `copy()` sends
`COPY (query) TO STDOUT` as a simple query.
"""

import json
import sys

import psycopg


def main(dsn: str) -> None:
    out = {}
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE fresh (id int, card_number text)")
            cur.execute("INSERT INTO fresh VALUES (%s, %s)", (1, "4111 1111 1111 1111"))
            cur.execute("SELECT card_number AS c FROM fresh WHERE id = %s", (1,))
            out["fresh_in_transaction"] = cur.fetchone()[0]
            # binary results, prepared after a few runs: the same through each path
            seen = set()
            for _ in range(6):
                cur.execute("SELECT card_number AS c FROM fresh", binary=True, prepare=True)
                seen.add(cur.fetchone()[0])
            out["fresh_binary_prepared"] = sorted(seen)
            conn.commit()
            cur.execute("SELECT card_number AS c FROM fresh")
            out["fresh_after_commit"] = cur.fetchone()[0]
            with cur.copy("COPY (SELECT id, ssn FROM accounts WHERE id <= 5 ORDER BY id) TO STDOUT") as copy:
                out["copy_rows"] = [list(r) for r in copy.rows()]
            cur.execute("SELECT id::text, ssn FROM accounts WHERE id <= 5 ORDER BY id")
            out["select_rows"] = [list(r) for r in cur.fetchall()]
            cur.execute("DROP TABLE fresh")
            conn.commit()
    print(json.dumps(out))


main(sys.argv[1])
