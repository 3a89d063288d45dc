#!/usr/bin/env python3
"""A libvirt-like QMP client driven by query-qmp-schema (plain json; qemu.qmp is not installed here).

  qmp_schema_client.py every SOCKET   parse the schema, resolve a few libvirt-style schema
                                      queries, then call every listed command with arguments
                                      built from its arg-type (plus one unexpected member and,
                                      where there are required members, none), quit last.
  qmp_schema_client.py errors SOCKET  send a fixed list of bad requests; print each desc.

Prints one JSON document on stdout. Exits 1 on a protocol break (no reply, a reply without
return/error, a reply with the wrong id, a dropped connection before quit).
"""
import json
import socket
import sys


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.f = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.greeting = self.read()
        self.seq = 0
        self.events = []

    def read(self):
        line = self.f.readline()
        if not line:
            raise SystemExit("protocol break: connection closed")
        return json.loads(line)

    def call(self, name, args=None):
        self.seq += 1
        msg = {"execute": name, "id": self.seq}
        if args is not None:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            r = self.read()
            if "event" in r:
                self.events.append(r["event"])
                continue
            if r.get("id") != self.seq:
                raise SystemExit("protocol break: reply %r to request %d" % (r, self.seq))
            if "return" in r:
                return r
            err = r.get("error")
            if not isinstance(err, dict) or not isinstance(err.get("class"), str) or not err.get("desc"):
                raise SystemExit("protocol break: reply without return or a proper error: %r" % r)
            return r


class Schema:
    def __init__(self, infos):
        self.by_name = {}
        for i in infos:
            if i["name"] in self.by_name:
                raise SystemExit("schema lists %s twice" % i["name"])
            self.by_name[i["name"]] = i
        self.commands = [i["name"] for i in infos if i["meta-type"] == "command"]
        self.events = [i["name"] for i in infos if i["meta-type"] == "event"]

    def t(self, name):
        if name not in self.by_name:
            raise SystemExit("schema names unknown type %s" % name)
        return self.by_name[name]

    def query(self, path):
        """libvirt's virQEMUQAPISchemaPathGet subset: cmd/arg-type/member, +case for a variant."""
        parts = path.split("/")
        cur = self.t(parts[0])
        for p in parts[1:]:
            if p in ("arg-type", "ret-type", "element-type"):
                cur = self.t(cur[p])
            elif p.startswith("+"):
                v = [x for x in cur.get("variants", []) if x["case"] == p[1:]]
                if not v:
                    return None
                cur = self.t(v[0]["type"])
            else:
                m = [x for x in cur.get("members", []) if x.get("name") == p]
                if not m:
                    return None
                cur = self.t(m[0]["type"])
        return cur

    HINTS = {"node-name": "disk0", "id": "x-schema-test", "filename": "/nonexistent/x-schema-test.img",
             "host": "127.0.0.1", "port": "1", "path": "/nonexistent/x.sock", "iothread": "x-no-such-thread"}

    def sample(self, type_name, member=None, depth=0):
        t = self.t(type_name)
        mt = t["meta-type"]
        if mt == "builtin":
            return {"string": self.HINTS.get(member, "x"), "int": 0, "number": 0, "boolean": False,
                    "null": None, "value": {}}.get(t["json-type"], "x")
        if mt == "enum":
            return t["values"][0]
        if mt == "array":
            return []
        if mt == "alternate":
            # a scalar branch when there is one (a node name rather than an inline node)
            kinds = [self.t(m["type"]) for m in t["members"]]
            for m, k in zip(t["members"], kinds):
                if k["meta-type"] in ("builtin", "enum"):
                    return self.sample(m["type"], member, depth + 1)
            return self.sample(t["members"][0]["type"], member, depth + 1)
        out = {}
        for m in t["members"]:
            if "default" not in m:
                out[m["name"]] = self.sample(m["type"], m["name"], depth + 1)
        if t.get("tag"):
            for v in t.get("variants", []):
                if v["case"] == out.get(t["tag"]):
                    out.update(self.sample(v["type"], None, depth + 1))
        return out

    def required(self, type_name):
        t = self.t(type_name)
        return [m["name"] for m in t.get("members", []) if "default" not in m]


def every(path):
    q = Qmp(path)
    report = {"greeting": q.greeting}
    report["capabilities"] = q.call("qmp_capabilities")
    schema = Schema(q.call("query-qmp-schema")["return"])
    report["commands"] = schema.commands
    report["events"] = schema.events
    report["query-commands"] = [c["name"] for c in q.call("query-commands")["return"]]
    report["queries"] = {p: (schema.query(p) or {}).get("name") for p in (
        "blockdev-add/arg-type/+file/filename", "blockdev-add/arg-type/+qcow2/backing",
        "block-export-add/arg-type/+nbd/name", "nbd-server-start/arg-type/tls-creds",
        "query-named-block-nodes/ret-type/element-type/node-name", "blockdev-add/arg-type/+nosuch")}
    calls = []
    for name in schema.commands:
        if name in ("quit", "qmp_capabilities"):
            continue
        info = schema.t(name)
        args = schema.sample(info["arg-type"])
        calls.append({"command": name, "arguments": args, "reply": q.call(name, args)})
        bogus = dict(args)
        bogus["x-bogus-member"] = 1
        calls.append({"command": name, "arguments": bogus, "reply": q.call(name, bogus)})
        if schema.required(info["arg-type"]):
            calls.append({"command": name, "arguments": {}, "reply": q.call(name, {})})
    report["calls"] = calls
    report["quit"] = q.call("quit")
    report["events-seen"] = q.events
    print(json.dumps(report))


BAD = [
    ("blockdev-del", None),
    ("blockdev-del", {"node-name": []}),
    ("blockdev-del", {"node-name": "x", "y": 1}),
    ("block-export-del", {"id": "x", "mode": "zz"}),
    ("x-blockdev-set-iothread", {"node-name": "x", "iothread": []}),
    ("query-named-block-nodes", {"flat": 1}),
    ("nbd-server-start", {"addr": {"type": "inet", "data": {"host": "h", "port": []}}}),
    ("nbd-server-start", {"addr": {"type": "inet"}}),
    ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "/x", "cache": {"direct": 1}}),
    ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "/x", "cache": {"direct": True, "q": 1}}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": 1}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file"}}),
    ("blockdev-add", {"driver": "foo", "node-name": "a"}),
    ("blockdev-add", {"driver": "raw", "node-name": "a", "file": {"driver": "bogus"}}),
    ("blockdev-add", {"driver": "raw", "node-name": "a", "file": {"driver": "file", "filename": "/x", "aio": 3}}),
    ("blockdev-add", {"driver": "raw", "node-name": "a", "file": {"driver": "file", "filename": "/x", "cache": {"direct": "x"}}}),
    ("blockdev-add", {"node-name": "a"}),
    ("object-add", {"qom-type": "iothread", "id": "a", "x": 1}),
    ("object-add", {"qom-type": "iothread", "id": "a", "poll-max-ns": 1.5}),
    ("object-del", {}),
    ("block-export-add", {"type": "nbd", "id": "e", "node-name": "n", "bogus": 1}),
    ("block-export-add", {"type": "nbd", "id": "e"}),
    ("query-commands", {"a": 1}),
    ("query-qmp-schema", {"a": 1}),
    ("qmp_capabilities", None),
    ("no-such-command", None),
]


def errors(path):
    q = Qmp(path)
    out = {"greeting-capabilities": q.greeting["QMP"]["capabilities"]}
    neg_bad = q.call("qmp_capabilities", {"enable": ["x"]})
    out["negotiation-bad-enable"] = neg_bad.get("error", {}).get("desc")
    q.call("qmp_capabilities")
    for name, args in BAD:
        r = q.call(name, args)
        out[json.dumps([name, args])] = r["error"]["class"] + ": " + r["error"]["desc"] if "error" in r else "ok"
    print(json.dumps(out))


if __name__ == "__main__":
    {"every": every, "errors": errors}[sys.argv[1]](sys.argv[2])
