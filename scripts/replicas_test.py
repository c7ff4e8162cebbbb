#!/usr/bin/env python3
"""Two eds-proxy replicas behind HAProxy fail over with nothing lost (issue 12, item 4).

Brings up, all on 127.0.0.1 and all stopped again at the end:
  * PostgreSQL (Debian's package): a throw-away cluster made by initdb in a temporary folder
    and started with pg_ctl (as the `postgres` user when run as root: initdb refuses root);
  * HAPI FHIR on that database: hapi-compose/hapi-native.sh with SPRING_PROFILES_ACTIVE=postgres
    (the caller holds /tmp/hapi-run.lock: scripts/replicas-test.sh);
  * the development token issuer and two eds-proxy replicas sharing one page-signing secret;
  * HAProxy (Debian's package) in TLS passthrough (`mode tcp`, round robin, one connection per
    request), health-checking each replica's admin /readyz.

Then two stations register and search in a loop (a new connection per request, so paging
alternates between the replicas); replica 1 gets SIGTERM mid-run and is restarted later.
A request that failed before it was sent (TCP connect or TLS handshake) is retried by the
client and counted; a registration that failed after it was sent cannot be retried safely
(it may have been stored) and fails the test, as does any answer other than 201/200.

At the end:
  * every registration that got a 201 is in HAPI exactly once (searched directly by its
    unique message id), and each station has exactly as many records as it got 201s;
  * both replicas served page requests, and the restarted replica served again;
  * a page handle works on either replica directly, and on neither for another station
    (403 forbidden, "this paging link was not issued to the caller");
  * replica 1 left within its drain time and exited 0;
  * figures: RSS of an idle replica, after the run, and holding 1,000 idle TLS connections
    (written to target/replicas-figures.json; README, "Deploying").

Ends with "replicas: N passed, N failed".
"""
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("EDS_PROXY_BIN", os.path.join(ROOT, "target", "debug", "eds-proxy"))
# The replicas may run another build (e.g. the release binary of scripts/docker-context-check.py
# for the memory figures); the issuer and the PKI need the default build's `dev` tools.
REPLICA_BIN = os.environ.get("REPLICA_BIN", BIN)
HAPI_SH = os.path.join(ROOT, "hapi-compose", "hapi-native.sh")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "ig")
GRACE = 5  # [server].grace_period_seconds of the replicas
PHASE_BOTH, PHASE_ONE, PHASE_AFTER = 10, 6, 10  # seconds of load: both up, one up, restarted
IDLE_CONNECTIONS = int(os.environ.get("REPLICAS_IDLE_CONNECTIONS", "1000"))
STATIONS = {  # device -> (IG example it registers, client certificate name, org SOR, GLN)
    "Cura-EUA": ("EDS-PDS-01.1", "cura-eua", "937961000016000", "GLN-1234"),
    "MultiMed-MSH": ("EDS-BDS-07.1", "multimed-msh", "698141000016008", "GLN-12345"),
}

passed = failed = 0


def ok(msg):
    global passed
    passed += 1
    print(f"ok   - {msg}", flush=True)


def bad(msg):
    global failed
    failed += 1
    print(f"FAIL - {msg}", flush=True)


def check(cond, msg, why=""):
    (ok if cond else bad)(msg + ("" if cond or not why else f": {why}"))
    return cond


def log(msg):
    print(f"     {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def accepts(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def http_status(url, timeout=3):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("GET", u.path + (f"?{u.query}" if u.query else ""))
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stack:
    """Every process the test starts, and how to stop it."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="eds-replicas.")
        os.chmod(self.work, 0o755)
        self.procs = {}
        self.pg = None
        self.hapi_env = None
        self.ports = {k: free_port() for k in ("pg", "hapi", "issuer", "lb", "p1", "p2", "a1", "a2")}

    # ------------------------------------------------------------------ PostgreSQL
    def start_postgres(self):
        versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: [int(x) for x in v.split(".")])
        pgbin = f"/usr/lib/postgresql/{versions[-1]}/bin"
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        data, sock = os.path.join(self.work, "pg"), os.path.join(self.work, "pgsock")
        for d in (data, sock):
            os.makedirs(d)
            if as_user:
                shutil.chown(d, "postgres", "postgres")
        subprocess.run(as_user + [f"{pgbin}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                       check=True, capture_output=True)
        opts = f"-p {self.ports['pg']} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(as_user + [f"{pgbin}/pg_ctl", "-D", data, "-l", os.path.join(data, "pg.log"),
                                  "-o", opts, "-w", "start"], check=True, capture_output=True)
        self.pg = (as_user, pgbin, data)
        psql = as_user + [f"{pgbin}/psql", "-h", "127.0.0.1", "-p", str(self.ports["pg"]), "-U", "postgres",
                          "-v", "ON_ERROR_STOP=1", "-q"]
        subprocess.run(psql + ["-c", "CREATE ROLE hapi LOGIN PASSWORD 'hapi'"], check=True)
        subprocess.run(psql + ["-c", "CREATE DATABASE hapi OWNER hapi"], check=True)
        version = subprocess.run(psql + ["-tAc", "SHOW server_version"], check=True, capture_output=True, text=True)
        return version.stdout.strip()

    # ------------------------------------------------------------------ HAPI
    def start_hapi(self):
        self.hapi_env = dict(os.environ, HAPI_PORT=str(self.ports["hapi"]),
                             HAPI_DATA_DIR=os.path.join(self.work, "hapi"),
                             SPRING_PROFILES_ACTIVE="postgres",
                             HAPI_DB_URL=f"jdbc:postgresql://127.0.0.1:{self.ports['pg']}/hapi",
                             HAPI_DB_USER="hapi", HAPI_DB_PASSWORD="hapi")
        base = subprocess.run(["bash", HAPI_SH, "start"], env=self.hapi_env, check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()
        subprocess.run(["bash", HAPI_SH, "bootstrap-search-parameters", base], env=self.hapi_env, check=True,
                       stderr=subprocess.DEVNULL)
        return base

    # ------------------------------------------------------------------ issuer, proxies, HAProxy
    def pki(self, *parts):
        return os.path.join(self.work, "pki", *parts)

    def start_issuer(self):
        subprocess.run([BIN, "dev", "pki", "--out", self.pki()], check=True, capture_output=True)
        shutil.copy(os.path.join(ROOT, "hapi-compose", "proxy", "enrolment.json"), self.work)
        cfg = os.path.join(self.work, "dev-issuer.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(f'listen = "127.0.0.1:{self.ports["issuer"]}"\nissuer = "https://localhost:9443"\n'
                    'audience = "eds"\nserver_cert = "pki/server.crt"\nserver_key = "pki/server.key"\n'
                    'client_ca = "pki/ca.crt"\nsigning_key = "pki/issuer.key"\nenrolment = "enrolment.json"\n')
        self.spawn("issuer", [BIN, "dev", "issuer", "--config", cfg])
        wait_for(lambda: accepts(self.ports["issuer"]), 30, "the dev issuer")

    def proxy_config(self, n, hapi_base):
        cfg = os.path.join(self.work, f"p{n}.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(f"""[listen]
address = "127.0.0.1:{self.ports[f'p{n}']}"
server_cert = "pki/server.crt"
server_key = "pki/server.key"
client_ca = "pki/ca.crt"
[admin]
address = "127.0.0.1:{self.ports[f'a{n}']}"
[upstream]
base_url = "{hapi_base}"
[public]
base_url = "https://localhost:{self.ports['lb']}/fhir"
[token]
issuer = "https://localhost:9443"
audience = ["eds"]
jwks_file = "pki/jwks.json"
[access]
cvr_directory = "{ROOT}/config/cvr-directory.example.toml"
[paging]
secret_file = "pki/page-secret"
[server]
threads = 2
grace_period_seconds = {GRACE}
""")
        return cfg

    def start_proxy(self, n):
        proc = self.spawn(f"p{n}", [REPLICA_BIN, "--config", os.path.join(self.work, f"p{n}.toml")])
        wait_for(lambda: http_status(f"http://127.0.0.1:{self.ports[f'a{n}']}/readyz")[0] == 200, 60,
                 f"replica {n} /readyz")
        return proc

    def start_haproxy(self):
        cfg = os.path.join(self.work, "haproxy.cfg")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(f"""global
    stats socket {self.work}/haproxy.sock mode 600 level admin
    maxconn 4096
defaults
    mode tcp
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    # a refused connection is tried again, the last time on another replica
    retries 3
    option redispatch
frontend fhir
    bind 127.0.0.1:{self.ports['lb']}
    default_backend replicas
backend replicas
    balance roundrobin
    # TLS passes through; health is the admin listener's /readyz
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
    server p1 127.0.0.1:{self.ports['p1']} check port {self.ports['a1']}
    server p2 127.0.0.1:{self.ports['p2']} check port {self.ports['a2']}
""")
        self.spawn("haproxy", ["haproxy", "-db", "-f", cfg])
        wait_for(lambda: self.lb_state() == {"p1": "UP", "p2": "UP"}, 30, "HAProxy to see both replicas UP")

    def lb_state(self):
        return {sv: row["status"].split(" ")[0] for sv, row in self.lb_stats().items() if sv in ("p1", "p2")}

    def lb_stats(self):
        """HAProxy's `show stat` rows of the backend, by server name (and BACKEND)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(self.work, "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "replicas":
                rows[row["svname"]] = row
        return rows

    def spawn(self, name, cmd):
        logf = open(os.path.join(self.work, f"{name}.log"), "ab")
        proc = subprocess.Popen(cmd, cwd=self.work, stdout=logf, stderr=subprocess.STDOUT,
                                env=dict(os.environ, RUST_LOG="info"))
        self.procs[name] = proc
        return proc

    def log_text(self, name):
        with open(os.path.join(self.work, f"{name}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=GRACE + 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.hapi_env:
            subprocess.run(["bash", HAPI_SH, "stop"], env=self.hapi_env, capture_output=True)
        if self.pg:
            as_user, pgbin, data = self.pg
            subprocess.run(as_user + [f"{pgbin}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        if os.environ.get("REPLICAS_KEEP"):
            print(f"     kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------- the client
class Client:
    """One request per TLS connection; says whether a failure happened before sending."""

    def __init__(self, stack, cert):
        self.ctx = ssl.create_default_context(cafile=stack.pki("ca.crt"))
        self.ctx.load_cert_chain(stack.pki(cert + ".crt"), stack.pki(cert + ".key"))

    def call(self, port, method, target, token=None, body=None, content_type="application/fhir+json"):
        """("not_sent", error) | ("after_send", error) | ("answered", status, json)."""
        conn = http.client.HTTPSConnection("localhost", port, context=self.ctx, timeout=30)
        try:
            try:
                conn.connect()  # TCP + TLS handshake: nothing of the request has left yet
            except (OSError, ssl.SSLError) as e:
                return ("not_sent", repr(e))
            headers = {"Accept": "application/fhir+json", "Connection": "close"}
            if token:
                headers["Authorization"] = "Bearer " + token
            data = None
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers["Content-Type"] = content_type
            return answer_of(conn, lambda: conn.request(method, target, body=data, headers=headers))
        finally:
            conn.close()


def answer_of(conn, send):
    """Runs `send()` on `conn` and reads the answer: ("after_send", error) if sending or
    reading failed, else ("answered", status, the JSON body or None)."""
    try:
        send()
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        return ("after_send", repr(e))
    try:
        return ("answered", resp.status, json.loads(raw or b"null"))
    except ValueError:
        return ("answered", resp.status, None)


def target_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + (f"?{u.query}" if u.query else "")


def diagnostics(body):
    try:
        return body["issue"][0].get("code"), body["issue"][0].get("diagnostics")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, None


class Station(threading.Thread):
    def __init__(self, stack, device, run_id, stop_event):
        super().__init__(daemon=True)
        example, cert, sor, gln = STATIONS[device]
        self.stack, self.device, self.run_id, self.stop_event = stack, device, run_id, stop_event
        self.client = Client(stack, cert)
        manifest = {e["id"]: e for e in json.load(open(os.path.join(FIXTURES, "manifest.json"), encoding="utf-8"))}
        with open(os.path.join(FIXTURES, manifest[example]["file"]), encoding="utf-8") as f:
            self.template = f.read()
        self.message_id = manifest[example]["message_id"]
        self.token = self.fetch_token(cert, sor, gln)
        self.created = []  # (message id, server id)
        self.retried_not_sent = 0
        self.retried_get_after_send = 0
        self.errors = []  # what the client could not retry, or did not expect
        self.pages = 0
        self.searches = 0

    def fetch_token(self, cert, sor, gln):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cert,
                                       "scope": f"EDS system/AuditEvent.crs SOR:{sor} GLN:{gln}"}).encode()
        r = self.client.call(self.stack.ports["issuer"], "POST", "/token", body=form,
                             content_type="application/x-www-form-urlencoded")
        if r[0] != "answered" or r[1] != 200:
            raise RuntimeError(f"token for {self.device}: {r}")
        return r[2]["access_token"]

    def get(self, target):
        """GET through HAProxy; idempotent, so every transport failure is retried (counted)."""
        for _ in range(50):
            r = self.client.call(self.stack.ports["lb"], "GET", target, self.token)
            if r[0] == "answered":
                return r
            if r[0] == "not_sent":
                self.retried_not_sent += 1
            else:
                self.retried_get_after_send += 1
            time.sleep(0.1)
        self.errors.append(f"GET {target}: still failing after 50 tries")
        return None

    def register(self, n):
        mid = f"{self.run_id}-{self.device}-{n:05d}"
        body = json.loads(self.template.replace(self.message_id, mid))
        for _ in range(50):
            r = self.client.call(self.stack.ports["lb"], "POST", "/fhir/AuditEvent", self.token, body)
            if r[0] == "not_sent":
                self.retried_not_sent += 1
                time.sleep(0.1)
                continue
            if r[0] == "after_send":
                self.errors.append(f"POST {mid}: failed after it was sent ({r[1]}): cannot be retried safely")
            elif r[1] != 201:
                self.errors.append(f"POST {mid}: HTTP {r[1]} {diagnostics(r[2])}")
            else:
                self.created.append((mid, r[2]["id"]))
            return
        self.errors.append(f"POST {mid}: never reached a replica in 50 tries")

    def search_and_page(self):
        r = self.get("/fhir/AuditEvent?_count=2")
        self.searches += 1
        for _ in range(3):
            if r is None:
                return
            if r[1] != 200:
                self.errors.append(f"search/page: HTTP {r[1]} {diagnostics(r[2])}")
                return
            nxt = next((l["url"] for l in r[2].get("link", []) if l.get("relation") == "next"), None)
            if not nxt:
                return
            r = self.get(target_of(nxt))
            self.pages += 1

    def run(self):
        n = 0
        while not self.stop_event.is_set():
            n += 1
            self.register(n)
            self.search_and_page()


# ---------------------------------------------------------------------- the test
def hold_registration(stack, station, mid):
    """Sends the head and half the body of a registration straight to replica 1 and holds the
    rest: (connection, rest of the body, station, message id)."""
    body = json.dumps(json.loads(station.template.replace(station.message_id, mid))).encode()
    half = len(body) // 2
    conn = http.client.HTTPSConnection("localhost", stack.ports["p1"], context=station.client.ctx, timeout=30)
    conn.putrequest("POST", "/fhir/AuditEvent", skip_accept_encoding=True)
    for name, value in (("Accept", "application/fhir+json"), ("Connection", "close"),
                        ("Authorization", "Bearer " + station.token), ("Content-Type", "application/fhir+json"),
                        ("Content-Length", str(len(body)))):
        conn.putheader(name, value)
    conn.endheaders(body[:half])
    time.sleep(0.5)  # the replica has read the head: the request is in flight
    return conn, body[half:], station, mid


def finish_registration(held):
    """Sends the held rest of the body; answers as Client.call does."""
    conn, rest, _, _ = held
    try:
        return answer_of(conn, lambda: conn.send(rest))
    finally:
        conn.close()


def idle_connections(stack, port, count):
    """Holds `count` completed mutual-TLS handshakes open on `port`; returns the sockets."""
    ctx = ssl.create_default_context(cafile=stack.pki("ca.crt"))
    ctx.load_cert_chain(stack.pki("cura-eua.crt"), stack.pki("cura-eua.key"))
    socks = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(ctx.wrap_socket(raw, server_hostname="localhost"))
    return socks


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # for the idle connections
    started = time.monotonic()
    stack = Stack()
    figures = {}
    try:
        log(f"work dir {stack.work}, ports {stack.ports}")
        version = stack.start_postgres()
        ok(f"PostgreSQL {version} started by the test (initdb + pg_ctl in a temporary folder)")
        hapi = stack.start_hapi()
        ok(f"HAPI FHIR on PostgreSQL at {hapi} (hapi-native.sh, SPRING_PROFILES_ACTIVE=postgres)")
        stack.start_issuer()
        for n in (1, 2):
            stack.proxy_config(n, hapi)
        p1 = stack.start_proxy(1)
        p2 = stack.start_proxy(2)
        ok("two replicas ready, sharing one page-signing secret")
        time.sleep(1)
        figures["idle_rss_kib"] = rss_kib(p2.pid)
        stack.start_haproxy()
        ok("HAProxy (mode tcp, TLS passthrough) sees both replicas UP by their /readyz")

        run_id = f"R{int(time.time())}"
        stop = threading.Event()
        stations = [Station(stack, d, run_id, stop) for d in STATIONS]
        for s in stations:
            s.start()
        time.sleep(PHASE_BOTH)
        # A registration in flight on replica 1 when SIGTERM arrives: its head and half its body
        # are sent, the rest only after the signal. The drain must let it finish (201, stored).
        held = hold_registration(stack, stations[0], f"{run_id}-{stations[0].device}-held")
        log("SIGTERM to replica 1")
        t0 = time.monotonic()
        p1.send_signal(signal.SIGTERM)
        time.sleep(1)
        held_answer = finish_registration(held)
        if check(held_answer[0] == "answered" and held_answer[1] == 201,
                 "a registration in flight on replica 1 at SIGTERM (body completed 1 s later) got its 201",
                 str(held_answer[:2])):
            stations[0].created.append((held[3], held_answer[2]["id"]))
        try:
            code = p1.wait(timeout=GRACE + 30)
        except subprocess.TimeoutExpired:
            code = None
        drained = time.monotonic() - t0
        check(code == 0 and drained <= GRACE + 12,
              f"replica 1 left after SIGTERM within its drain ({drained:.1f} s, grace {GRACE} s, exit {code})")
        wait_for(lambda: stack.lb_state().get("p1") == "DOWN", 10, "HAProxy to mark replica 1 DOWN")
        ok("HAProxy marked replica 1 DOWN")
        time.sleep(PHASE_ONE)
        restart_offset = len(stack.log_text("p1"))
        log("restarting replica 1")
        p1 = stack.start_proxy(1)
        wait_for(lambda: stack.lb_state().get("p1") == "UP", 30, "HAProxy to mark replica 1 UP again")
        ok("replica 1 restarted and back UP in HAProxy")
        time.sleep(PHASE_AFTER)
        stop.set()
        for s in stations:
            s.join(timeout=60)
        figures["after_run_rss_kib"] = rss_kib(p2.pid)

        created = sum(len(s.created) for s in stations)
        retried = sum(s.retried_not_sent for s in stations)
        retried_get = sum(s.retried_get_after_send for s in stations)
        pages = sum(s.pages for s in stations)
        searches = sum(s.searches for s in stations)
        log(f"{created} registrations created, {searches} searches, {pages} pages; "
            f"{retried} requests retried after failing before they were sent, "
            f"{retried_get} GETs retried after failing once sent")
        backend = stack.lb_stats().get("BACKEND", {})
        log(f"HAProxy: {backend.get('wretr')} connection retries, {backend.get('wredis')} redispatches to the "
            f"other replica, {backend.get('econ')} connection errors")
        errors = [e for s in stations for e in s.errors]
        check(not errors, "no client saw an error it could not retry, nor an unexpected answer", "; ".join(errors[:10]))
        check(created >= 10 and pages >= 10, f"the stations kept working through the run ({created} created, {pages} pages)")

        # Every 201 is in HAPI exactly once; nothing else was stored for the stations.
        missing, doubled = [], []
        for s in stations:
            for mid, sid in s.created:
                status, raw = http_status(f"{hapi}/AuditEvent?message-id:exact={mid}&_count=10", timeout=30)
                ids = [e["resource"]["id"] for e in json.loads(raw).get("entry", [])] if status == 200 else None
                if ids is None or ids.count(sid) == 0:
                    missing.append((mid, sid, status))
                elif len(ids) != 1:
                    doubled.append((mid, ids))
        check(not missing, f"every one of the {created} registrations that got a 201 is in HAPI", str(missing[:5]))
        check(not doubled, "none of them is there twice", str(doubled[:5]))
        for s in stations:
            label = urllib.parse.quote(f"urn:eds-proxy:label:device-id|{s.device}")
            status, raw = http_status(f"{hapi}/AuditEvent?_security={label}&_summary=count", timeout=30)
            total = json.loads(raw).get("total") if status == 200 else None
            check(total == len(s.created), f"HAPI holds exactly {len(s.created)} records of {s.device}, one per 201",
                  f"HAPI counts {total}")

        # Paging alternated: both replicas answered page requests; the restarted one again.
        page_lines = {n: stack.log_text(f"p{n}").count('"interaction":"page"') for n in (1, 2)}
        after_restart = stack.log_text("p1")[restart_offset:].count('"interaction":"page"')
        check(page_lines[1] > 0 and page_lines[2] > 0,
              f"page requests were served by both replicas (replica 1: {page_lines[1]}, replica 2: {page_lines[2]})")
        check(after_restart > 0, f"the restarted replica served page requests again ({after_restart})")

        # A page handle works on either replica, for its caller only.
        cura, multimed = stations
        r = cura.get("/fhir/AuditEvent?_count=1")
        nxt = next((l["url"] for l in r[2].get("link", []) if l.get("relation") == "next"), None) if r else None
        if check(nxt is not None and nxt.startswith(f"https://localhost:{stack.ports['lb']}/fhir?"),
                 "a search through HAProxy hands out a next link on the public base", str(nxt)):
            answers = {}
            for n in (1, 2):
                a = cura.client.call(stack.ports[f"p{n}"], "GET", target_of(nxt), cura.token)
                answers[n] = a
                check(a[0] == "answered" and a[1] == 200,
                      f"{cura.device}'s page handle works on replica {n} directly", str(a[:2]))
            ids = [[e["resource"]["id"] for e in a[2].get("entry", [])] if a[0] == "answered" and a[2] else None
                   for a in answers.values()]
            check(ids[0] == ids[1] and ids[0], "both replicas serve the same page for it", str(ids))
            for n in (1, 2):
                a = multimed.client.call(stack.ports[f"p{n}"], "GET", target_of(nxt), multimed.token)
                got = (a[1], *diagnostics(a[2])) if a[0] == "answered" else a
                check(got == (403, "forbidden", "this paging link was not issued to the caller"),
                      f"the same handle is refused to {multimed.device} on replica {n} (403 forbidden, not issued)",
                      str(got))

        # Memory with 1,000 idle mutual-TLS connections on one replica.
        socks = idle_connections(stack, stack.ports["p2"], IDLE_CONNECTIONS)
        time.sleep(1)
        figures[f"rss_with_{IDLE_CONNECTIONS}_idle_tls_connections_kib"] = rss_kib(p2.pid)
        for s in socks:
            s.close()
        figures["threads"] = 2
        figures["binary"] = os.path.relpath(REPLICA_BIN, ROOT)
        log(f"replica memory (RSS): {figures}")
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        with open(os.path.join(ROOT, "target", "replicas-figures.json"), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
        ok(f"held {IDLE_CONNECTIONS} idle TLS connections on one replica (figures in target/replicas-figures.json)")
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        bad(f"set-up or run failed: {e}")
        for name in ("p1", "p2", "haproxy", "issuer"):
            try:
                print(f"---- last lines of {name}.log\n" + "\n".join(stack.log_text(name).splitlines()[-15:]))
            except OSError:
                pass
    finally:
        stack.stop()
        print(f"replicas: {passed} passed, {failed} failed ({time.monotonic() - started:.0f} s)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
