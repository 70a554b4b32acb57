package mqtt

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve/internal/gateway/driver"
)

func TestTopics(t *testing.T) {
	tp := newTopics("reeve", "app1")
	if got := tp.status("dev-a"); got != "reeve/app1/dev-a/status" {
		t.Errorf("status topic %q", got)
	}
	if got := tp.chunk("dev-a", 12); got != "reeve/app1/dev-a/fw/12" {
		t.Errorf("chunk topic %q", got)
	}
	if got := tp.filter(); got != "reeve/app1/#" {
		t.Errorf("filter %q", got)
	}
	for _, c := range []struct {
		topic string
		id    string
		kind  kind
		chunk int
		err   string
	}{
		{topic: "reeve/app1/dev-a/status", id: "dev-a", kind: kindStatus},
		{topic: "reeve/app1/dev-a/logs", id: "dev-a", kind: kindLogs},
		{topic: "reeve/app1/dev-a/ack", id: "dev-a", kind: kindAck},
		{topic: "reeve/app1/dev-a/result", id: "dev-a", kind: kindResult},
		{topic: "reeve/app1/dev-a/cmd", id: "dev-a", kind: kindCmd},
		{topic: "reeve/app1/dev-a/fw/0", id: "dev-a", kind: kindChunk},
		{topic: "reeve/app1/dev-a/fw/417", id: "dev-a", kind: kindChunk, chunk: 417},
		{topic: "reeve/app1/dev-a/fw/-1", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a/fw/01", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a/fw/ack", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a/fw", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a/status/x", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a/", id: "dev-a", err: "not in the scheme"},
		{topic: "reeve/app1/dev-a", id: "dev-a", err: "nothing after the device"},
		{topic: "reeve/app1//status", err: "names no device"},
		{topic: "reeve/app2/dev-a/status", err: "not under"},
		{topic: "reeve/app1", err: "not under"},
		{topic: "other/app1/dev-a/status", err: "not under"},
	} {
		id, k, n, err := tp.parse(c.topic)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || id != c.id {
				t.Errorf("parse(%q) = %q, %v; want device %q and an error with %q", c.topic, id, err, c.id, c.err)
			}
			continue
		}
		if err != nil || id != c.id || k != c.kind || n != c.chunk {
			t.Errorf("parse(%q) = %q %v %d %v, want %q %v %d", c.topic, id, k, n, err, c.id, c.kind, c.chunk)
		}
	}
}

func TestValidNames(t *testing.T) {
	for s, want := range map[string]bool{"reeve": true, "site/3/reeve": true, "": false, "$SYS": false, "a/+/b": false,
		"a/#": false, "a//b": false, "/a": false, "a/": false} {
		if got := validPrefix(s); got != want {
			t.Errorf("validPrefix(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]bool{"dev-a": true, "b1e2-…": true, "": false, "a/b": false, "a+": false, "#": false, "a\x00": false} {
		if got := validLevel(s); got != want {
			t.Errorf("validLevel(%q) = %v", s, got)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestParseStatus(t *testing.T) {
	for _, c := range []struct {
		in   string
		want statusMsg
		err  string
	}{
		{in: `{"online":true,"commit":"c1","device_type":"esp32","info":{"model":"x","rssi":-60,"ok":true}}`,
			want: statusMsg{Online: true, Commit: ptr("c1"), DeviceType: ptr("esp32"), Info: map[string]string{"model": "x", "rssi": "-60", "ok": "true"}}},
		{in: ` {"online":false} `, want: statusMsg{}},
		{in: `{"online":true,"future":"field"}`, want: statusMsg{Online: true}},
		{in: `{"commit":"c1"}`, err: `no "online"`},
		{in: `{"online":"yes"}`, err: "invalid JSON"},
		{in: `{"online":true}{"online":false}`, err: "after the object"},
		{in: `online`, err: "not a JSON object"},
		{in: `[true]`, err: "not a JSON object"},
		{in: `{"online":true,"info":["a"]}`, err: "invalid JSON"},
	} {
		got, err := parseStatus([]byte(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseStatus(%s): %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseStatus(%s): %v", c.in, err)
		} else if d := cmp.Diff(c.want, got); d != "" {
			t.Errorf("parseStatus(%s) (-want +got):\n%s", c.in, d)
		}
	}
}

func TestParseLogs(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	in := `{"ts":1700000000.25,"message":"reading 21.5"}
{"message":"booted","system":true}

{"ts":0,"message":"no clock yet"}
not json
{"ts":1}
{"message":42}`
	lines, errs := parseLogs([]byte(in), now)
	want := []driver.LogLine{
		{Time: time.Unix(1700000000, 250_000_000), Message: "reading 21.5"},
		{Time: now, Message: "booted", System: true},
		{Time: now, Message: "no clock yet"},
	}
	if d := cmp.Diff(want, lines); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	if len(errs) != 3 || !strings.Contains(errs[0].Error(), "line 5") || !strings.Contains(errs[1].Error(), `line 6: no "message"`) {
		t.Errorf("errors %v", errs)
	}
}

func TestParseAckAndResult(t *testing.T) {
	a, err := parseAck([]byte(`{"commit":"c2","chunk":3,"crc32":4294967295,"next":4}`))
	if err != nil || a.Commit != "c2" || *a.Chunk != 3 || *a.CRC32 != 0xffffffff || a.Next != 4 {
		t.Errorf("ack %+v %v", a, err)
	}
	a, err = parseAck([]byte(`{"commit":"c2","next":0}`))
	if err != nil || a.Chunk != nil || a.CRC32 != nil {
		t.Errorf("start ack %+v %v", a, err)
	}
	for in, msg := range map[string]string{
		`{"next":1}`:                          `no "commit"`,
		`{"commit":"c2"}`:                     `no "next"`,
		`{"commit":"c2","next":-1}`:           "next -1",
		`{"commit":"c2","next":1,"chunk":-2}`: "chunk -2",
		`{"commit":"c2","next":1,"crc32":-1}`: "invalid JSON",
		`garbage`:                             "not a JSON object",
	} {
		if _, err := parseAck([]byte(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("parseAck(%s): %v, want %q", in, err, msg)
		}
	}

	r, err := parseResult([]byte(`{"commit":"c2","ok":false,"reason":"sha256 mismatch"}`))
	if err != nil || r != (resultMsg{Commit: "c2", Reason: "sha256 mismatch"}) {
		t.Errorf("result %+v %v", r, err)
	}
	r, err = parseResult([]byte(`{"commit":"c2","ok":false}`))
	if err != nil || r.Reason == "" {
		t.Errorf("a failure without a reason gets one: %+v %v", r, err)
	}
	for in, msg := range map[string]string{`{"ok":true}`: `no "commit"`, `{"commit":"c2"}`: `no "ok"`} {
		if _, err := parseResult([]byte(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("parseResult(%s): %v, want %q", in, err, msg)
		}
	}
}

func TestCommands(t *testing.T) {
	for got, want := range map[string]string{
		string(simpleCmd(cmdRestart)):                             `{"cmd":"restart"}`,
		string(simpleCmd(cmdIdentify)):                            `{"cmd":"identify"}`,
		string(configureCmd(map[string]string{"RATE": "5"}, nil)): `{"cmd":"configure","env":{"RATE":"5"},"config":{}}`,
		string(updateCmd{Commit: "c2", Size: 2500, SHA256: "ab", ChunkSize: 1024, Chunks: 3}.encode()): `{"cmd":"update","commit":"c2","size":2500,"sha256":"ab","chunk_size":1024,"chunks":3}`,
	} {
		if got != want {
			t.Errorf("command %s, want %s", got, want)
		}
	}
}
