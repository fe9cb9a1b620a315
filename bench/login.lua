-- wrk script for bench/run.sh: every request is a login (POST /v1/sessions) of the bench user.
-- Each successful login hashes the password (Argon2id) and creates a new session; the
-- response's Set-Cookie is ignored. Non-2xx answers are counted by wrk as usual.
--
--   wrk -t1 -c4 -d10s -s bench/login.lua http://127.0.0.1:PORT/v1/sessions
--
-- The credentials can be overridden with the environment variables BENCH_USER / BENCH_PASSWORD
-- (run.sh sets them to the user it registered).

local user = os.getenv("BENCH_USER") or "bench"
local password = os.getenv("BENCH_PASSWORD") or "bench-password-1"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"username":"%s","password":"%s"}', user, password)
