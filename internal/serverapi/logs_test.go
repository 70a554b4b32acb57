package serverapi_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
	"reeve.dev/reeve/internal/serverd"
	"reeve.dev/reeve/internal/serverd/serverdtest"
)

// postLogs sends a log-stream body and returns the status and answer.
func (e *env) postLogs(uuid, key, stream string, body []byte, gz bool) (int, []byte) {
	e.t.Helper()
	if gz {
		body = gzipBytes(e.t, body)
	}
	req, err := http.NewRequest("POST", e.url+"/device/v2/"+uuid+"/log-stream", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", serverapi.NDJSON)
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if stream != "" {
		req.Header.Set(serverapi.LogStreamHeader, stream)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// mustPostLogs sends lines that must be taken and returns the answer.
func (e *env) mustPostLogs(uuid, key, stream string, body []byte, gz bool) serverapi.LogAck {
	e.t.Helper()
	status, b := e.postLogs(uuid, key, stream, body, gz)
	if status != 200 {
		e.t.Fatalf("log-stream: %d %s", status, b)
	}
	var ack serverapi.LogAck
	if err := json.Unmarshal(b, &ack); err != nil {
		e.t.Fatalf("log-stream answer %s: %v", b, err)
	}
	return ack
}

// logsOf reads a device's log through the operator API (raw HTTP).
func (e *env) logsOf(uuid, query string) []reeve.LogLine {
	e.t.Helper()
	status, b, h := e.call("GET", "/api/v1/devices/"+uuid+"/logs?"+query, adminToken, nil)
	if status != 200 {
		e.t.Fatalf("GET logs?%s: %d %s", query, status, b)
	}
	if ct := h.Get("Content-Type"); ct != serverapi.NDJSON {
		e.t.Errorf("Content-Type %q, want %s", ct, serverapi.NDJSON)
	}
	out := []reeve.LogLine{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		var l reeve.LogLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			e.t.Fatalf("served line %q: %v", line, err)
		}
		out = append(out, l)
	}
	return out
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ndjson joins lines, each ending in a newline.
func ndjson(lines ...string) []byte {
	return []byte(strings.Join(lines, "\n") + "\n")
}

// jsonLine is a log line as the agent sends it.
func jsonLine(seq uint64, service, msg string) string {
	b, _ := json.Marshal(map[string]any{"seq": seq, "service": service, "message": msg, "timestamp": "2026-11-23T15:28:44.123456789Z"})
	return string(b)
}

func messagesOf(ls []reeve.LogLine) []string {
	out := []string{}
	for _, l := range ls {
		out = append(out, l.Message)
	}
	return out
}

func sameMessages(t *testing.T, what string, want []string, got []reeve.LogLine) {
	t.Helper()
	if diff := cmp.Diff(want, messagesOf(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

func TestLogStreamPlainAndGzip(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	// The curl example of docs/api.md.
	ack := e.mustPostLogs(s.a, s.keyA, "7f3a", ndjson(`{"seq":1,"service":"web","message":"hello"}`, `{"seq":2,"system":true,"message":"Killed service db"}`), true)
	if ack != (serverapi.LogAck{Stored: 2, Duplicates: 0, LastSeq: 2}) {
		t.Errorf("gzip: %+v", ack)
	}
	// Plain, with a line resent, CRLF line ends, blank lines and no
	// newline at the end.
	body := []byte(jsonLine(2, "web", "again") + "\r\n\r\n" + jsonLine(3, "web", "three") + "\n   \n" + jsonLine(4, "db", "four"))
	ack = e.mustPostLogs(s.a, s.keyA, "7f3a", body, false)
	if ack != (serverapi.LogAck{Stored: 2, Duplicates: 1, LastSeq: 4}) {
		t.Errorf("plain: %+v", ack)
	}
	got := e.logsOf(s.a, "")
	sameMessages(t, "stored", []string{"hello", "Killed service db", "three", "four"}, got)
	for i, l := range got {
		if l.ID == 0 || l.Device != s.a || (i > 0 && l.ID <= got[i-1].ID) {
			t.Errorf("line %d: id %d device %q", i, l.ID, l.Device)
		}
	}
	if !got[1].System || got[0].Service != "web" || got[3].Service != "db" {
		t.Errorf("fields lost: %+v", got)
	}
	want := time.Date(2026, 11, 23, 15, 28, 44, 123456000, time.UTC)
	if !got[2].Timestamp.Equal(want) {
		t.Errorf("timestamp %v, want %v (to the microsecond)", got[2].Timestamp, want)
	}
	// No timestamp: the time the server got it.
	before := time.Now().Add(-time.Second)
	e.mustPostLogs(s.a, s.keyA, "", ndjson(`{"message":"no time"}`), false)
	got = e.logsOf(s.a, "")
	if ts := got[len(got)-1].Timestamp; ts.Before(before) || ts.After(time.Now().Add(time.Second)) {
		t.Errorf("a line without a timestamp got %v", ts)
	}
	// An empty body says how far the stream is stored.
	if ack := e.mustPostLogs(s.a, s.keyA, "7f3a", nil, false); ack != (serverapi.LogAck{LastSeq: 4}) {
		t.Errorf("empty body: %+v", ack)
	}
	if ack := e.mustPostLogs(s.a, s.keyA, "7f3a", nil, true); ack != (serverapi.LogAck{LastSeq: 4}) {
		t.Errorf("empty gzip body: %+v", ack)
	}
	if ack := e.mustPostLogs(s.a, s.keyA, "", nil, false); ack != (serverapi.LogAck{}) {
		t.Errorf("empty body without stream: %+v", ack)
	}
}

func TestLogStreamBadInput(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	long := strings.Repeat("x", serverapi.MaxRawLogLine+1)
	for _, tc := range []struct {
		name   string
		key    string
		uuid   string
		stream string
		body   []byte
		gz     bool
		status int
		code   string
		says   []string
		stored []string
	}{
		{name: "not NDJSON", body: ndjson(jsonLine(1, "web", "one"), jsonLine(2, "web", "two"), "GET / HTTP/1.1", jsonLine(4, "web", "four")),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 3", "not a JSON object", "before it are stored"}, stored: []string{"one", "two"}},
		{name: "not NDJSON, gzip", body: ndjson(jsonLine(1, "web", "one"), `["an array"]`), gz: true,
			status: 400, code: reeve.CodeInvalid, says: []string{"line 2", "not a JSON object"}, stored: []string{"one"}},
		{name: "a line over 128 KiB", body: ndjson(jsonLine(1, "web", "one"), jsonLine(2, "web", long), jsonLine(3, "web", "three")),
			status: 413, code: reeve.CodeTooLarge, says: []string{"line 2", "131072"}, stored: []string{"one"}},
		{name: "a line over 128 KiB without a newline", body: []byte(jsonLine(1, "web", long)),
			status: 413, code: reeve.CodeTooLarge, says: []string{"line 1"}, stored: []string{}},
		{name: "another device's key", key: s.keyB, body: ndjson(jsonLine(1, "web", "one")),
			status: 403, code: reeve.CodeForbidden, stored: []string{}},
		{name: "no key", key: "-", body: ndjson(jsonLine(1, "web", "one")),
			status: 401, code: reeve.CodeUnauthorized, stored: []string{}},
		{name: "no message", body: ndjson(`{"seq":1,"service":"web"}`),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 1", "no message"}, stored: []string{}},
		{name: "a seq that is not a number", body: ndjson(`{"seq":"one","message":"x"}`),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 1", "seq"}, stored: []string{}},
		{name: "a negative seq", body: ndjson(`{"seq":-1,"message":"x"}`),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 1", "seq"}, stored: []string{}},
		{name: "a seq over 2^63", body: ndjson(`{"seq":9223372036854775808,"message":"x"}`),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 1", "seq"}, stored: []string{}},
		{name: "a bad timestamp", body: ndjson(`{"timestamp":"yesterday","message":"x"}`),
			status: 400, code: reeve.CodeInvalid, says: []string{"line 1", "yesterday"}, stored: []string{}},
		{name: "a bad stream ID", stream: "no spaces please", body: ndjson(jsonLine(1, "web", "one")),
			status: 400, code: reeve.CodeInvalid, says: []string{"log stream ID"}, stored: []string{}},
		{name: "not gzip", body: []byte("plain text, said to be gzip"), status: 400, code: reeve.CodeInvalid, says: []string{"gzip"}, stored: []string{}},
		{name: "not a device UUID", uuid: "nope", body: ndjson(jsonLine(1, "web", "one")), status: 400, code: reeve.CodeInvalid, stored: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, uuid := s.keyA, s.a
			if tc.key == "-" {
				key = ""
			} else if tc.key != "" {
				key = tc.key
			}
			if tc.uuid != "" {
				uuid = tc.uuid
			}
			req, _ := http.NewRequest("POST", e.url+"/device/v2/"+uuid+"/log-stream", bytes.NewReader(tc.body))
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			body := tc.body
			if tc.gz {
				body = gzipBytes(t, body)
				req.Body = io.NopCloser(bytes.NewReader(body))
				req.ContentLength = int64(len(body))
			}
			if tc.gz || tc.name == "not gzip" {
				req.Header.Set("Content-Encoding", "gzip")
			}
			if tc.stream != "" {
				req.Header.Set(serverapi.LogStreamHeader, tc.stream)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("%d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			eb := errorOf(t, b)
			if eb.Code != tc.code {
				t.Errorf("code %q, want %q", eb.Code, tc.code)
			}
			for _, m := range tc.says {
				if !strings.Contains(eb.Message, m) {
					t.Errorf("%q does not say %q", eb.Message, m)
				}
			}
			sameMessages(t, "stored", tc.stored, e.logsOf(s.a, ""))
			sameMessages(t, "stored for device b", []string{}, e.logsOf(s.b, ""))
			// Start the next case afresh.
			e.must(204, "DELETE", "/api/v1/devices/"+s.a, adminToken, nil, nil)
			e.must(201, "POST", "/device/register", s.provKey, serverapi.RegisterRequest{UUID: s.a, DeviceType: "generic-amd64", APIKey: s.keyA}, nil)
		})
	}
	// A content encoding the server does not know.
	req, _ := http.NewRequest("POST", e.url+"/device/v2/"+s.a+"/log-stream", strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+s.keyA)
	req.Header.Set("Content-Encoding", "br")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(errorOf(t, b).Message, "br") {
		t.Errorf("Content-Encoding br: %d %s", resp.StatusCode, b)
	}
}

func TestLogStreamTruncatesLongMessages(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	msg := strings.Repeat("é", 10_000) // 20,000 bytes
	ack := e.mustPostLogs(s.a, s.keyA, "", ndjson(jsonLine(0, "web", msg)), true)
	if ack.Stored != 1 {
		t.Fatalf("%+v", ack)
	}
	got := e.logsOf(s.a, "")[0].Message
	if len(got) > reeve.MaxLogLineBytes || !strings.HasSuffix(got, reeve.LogTruncatedMarker) || !strings.HasPrefix(msg, strings.TrimSuffix(got, reeve.LogTruncatedMarker)) {
		t.Errorf("stored message: %d bytes, ends %q", len(got), got[len(got)-20:])
	}
}

// Binary output the agent cut to the message limit takes up to six times
// as much as JSON: it is stored, not refused as too long.
func TestLogStreamTakesEscapedBinaryLines(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	b := make([]byte, reeve.MaxLogLineBytes)
	for i := range b {
		b[i] = byte(i % 32) // control characters: \u00XX each
	}
	line, err := json.Marshal(reeve.LogLine{Seq: 1, Service: "web", Message: reeve.TruncateLogMessage(string(b))})
	if err != nil {
		t.Fatal(err)
	}
	if len(line) < 5*reeve.MaxLogLineBytes {
		t.Fatalf("the line is only %d bytes: not the worst case", len(line))
	}
	if ack := e.mustPostLogs(s.a, s.keyA, "", append(line, '\n'), true); ack.Stored != 1 {
		t.Fatalf("%+v", ack)
	}
}

// A body the agent keeps writing to: each flushed line reaches a follower
// while the request goes on, and the answer comes when the body ends.
func TestLogStreamStreamedBodyReachesFollowers(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	op := serverapi.NewClient(e.url, adminToken, nil)
	dev := serverapi.NewClient(e.url, s.keyA, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	e.mustPostLogs(s.a, s.keyA, "s1", ndjson(jsonLine(1, "web", "history")), false)
	followed := make(chan reeve.LogLine, 100)
	followErr := make(chan error, 1)
	go func() {
		followErr <- op.Logs(ctx, s.a, serverapi.LogQuery{Follow: true}, func(l reeve.LogLine) error {
			followed <- l
			return nil
		})
	}()
	see := func(want string) {
		t.Helper()
		select {
		case l := <-followed:
			if l.Message != want {
				t.Fatalf("the follower got %q, want %q", l.Message, want)
			}
		case err := <-followErr:
			t.Fatalf("the follow ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("the follower did not get %q in 30 s", want)
		}
	}
	see("history")

	pr, pw := io.Pipe()
	zw := gzip.NewWriter(pw)
	acked := make(chan serverapi.LogAck, 1)
	ackErr := make(chan error, 1)
	go func() {
		ack, err := dev.LogStream(ctx, s.a, "s1", pr, true)
		pr.CloseWithError(err) // the writer's next write fails rather than blocks
		if err != nil {
			ackErr <- err
			return
		}
		acked <- ack
	}()
	for i, msg := range []string{"streamed one", "streamed two", "streamed three"} {
		if _, err := io.WriteString(zw, jsonLine(uint64(i+2), "web", msg)+"\n"); err != nil {
			t.Fatal(err)
		}
		if err := zw.Flush(); err != nil { // what the agent does every 100 ms
			t.Fatal(err)
		}
		see(msg)
		select {
		case ack := <-acked:
			t.Fatalf("the request ended (%+v) before its body did", ack)
		case err := <-ackErr:
			t.Fatalf("the request failed: %v", err)
		default:
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	select {
	case ack := <-acked:
		if ack != (serverapi.LogAck{Stored: 3, LastSeq: 4}) {
			t.Errorf("ack %+v", ack)
		}
	case err := <-ackErr:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("no answer 30 s after the body ended")
	}
	cancel()
	if err := <-followErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the follow ended with %v, want context.Canceled", err)
	}
}

// A line refused mid-stream ends the request at once, with the lines
// before it stored, though the agent has not finished its body.
func TestLogStreamRefusedMidStream(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	dev := serverapi.NewClient(e.url, s.keyA, nil)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := dev.LogStream(t.Context(), s.a, "s1", pr, false)
		pr.CloseWithError(errors.New("request over"))
		done <- err
	}()
	if _, err := io.WriteString(pw, jsonLine(1, "web", "fine")+"\n"+`{"message": 7}`+"\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if reeve.ErrorCode(err) != reeve.CodeInvalid || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("err = %v, want invalid naming line 2", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a refused line did not end the request")
	}
	pw.Close()
	sameMessages(t, "stored", []string{"fine"}, e.logsOf(s.a, ""))
}

func TestDeviceLogsQuery(t *testing.T) {
	e := newEnv(t)
	s := e.setup()
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	e.mustPostLogs(s.a, s.keyA, "s1", ndjson(
		`{"seq":1,"service":"web","message":"w-old","timestamp":"`+old+`"}`,
		`{"seq":2,"service":"db","message":"d1"}`,
		`{"seq":3,"system":true,"message":"sys"}`,
		`{"seq":4,"service":"web","stderr":true,"message":"w-err"}`,
		`{"seq":5,"service":"cache","message":"c1"}`,
	), true)
	all := e.logsOf(s.a, "")
	sameMessages(t, "all", []string{"w-old", "d1", "sys", "w-err", "c1"}, all)
	if !all[3].Stderr {
		t.Errorf("stderr lost: %+v", all[3])
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"service=web", []string{"w-old", "w-err"}},
		{"service=web&service=cache", []string{"w-old", "w-err", "c1"}},
		{"system=true", []string{"sys"}},
		{"system=false", []string{"w-old", "d1", "sys", "w-err", "c1"}},
		{"since=10m", []string{"d1", "sys", "w-err", "c1"}},
		{"since=" + url.QueryEscape(time.Now().Add(-10*time.Minute).UTC().Format(time.RFC3339)), []string{"d1", "sys", "w-err", "c1"}},
		{"after=" + fmt.Sprint(all[2].ID), []string{"w-err", "c1"}},
		{"limit=2", []string{"w-err", "c1"}},
		{"service=web&limit=1", []string{"w-err"}},
	} {
		sameMessages(t, tc.query, tc.want, e.logsOf(s.a, tc.query))
	}
	for _, tc := range []struct {
		query, says string
	}{
		{"limit=0", "limit"}, {"limit=10001", "limit"}, {"limit=x", "limit"},
		{"since=yesterday", "since"}, {"since=-5m", "since"}, {"after=-1", "after"},
		{"system=maybe", "system"}, {"follow=perhaps", "follow"}, {"service=", "service"},
	} {
		status, b, _ := e.call("GET", "/api/v1/devices/"+s.a+"/logs?"+tc.query, adminToken, nil)
		if status != 400 || !strings.Contains(errorOf(t, b).Message, tc.says) {
			t.Errorf("?%s: %d %s, want 400 about %s", tc.query, status, b, tc.says)
		}
	}
	for _, uuid := range []string{uuidN(9), "not-a-uuid"} {
		want := map[string]int{uuidN(9): 404, "not-a-uuid": 400}[uuid]
		for _, q := range []string{"", "follow=true"} {
			if status, b, _ := e.call("GET", "/api/v1/devices/"+uuid+"/logs?"+q, adminToken, nil); status != want {
				t.Errorf("logs of %s ?%s: %d %s, want %d", uuid, q, status, b, want)
			}
		}
	}
	// The typed client gets the same.
	op := serverapi.NewClient(e.url, adminToken, nil)
	var got []reeve.LogLine
	err := op.Logs(t.Context(), s.a, serverapi.LogQuery{Services: []string{"web", "db"}, Since: time.Now().Add(-10 * time.Minute), Limit: 1}, func(l reeve.LogLine) error {
		got = append(got, l)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sameMessages(t, "client", []string{"w-err"}, got)
	if err := op.Logs(t.Context(), uuidN(9), serverapi.LogQuery{}, func(reeve.LogLine) error { return nil }); reeve.ErrorCode(err) != reeve.CodeNotFound {
		t.Errorf("logs of an unknown device: %v", err)
	}
	stop := errors.New("enough")
	n := 0
	err = op.Logs(t.Context(), s.a, serverapi.LogQuery{}, func(reeve.LogLine) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("fn's error: %v after %d lines, want it returned after 1", err, n)
	}
}

// A follower gets the history first, then lines stored after it began,
// filtered as asked, and an empty line whenever it was quiet for the
// keep-alive.
func TestDeviceLogsFollow(t *testing.T) {
	t.Cleanup(serverapi.SetLogKeepAlive(10 * time.Millisecond))
	e := newEnv(t)
	s := e.setup()
	e.mustPostLogs(s.a, s.keyA, "s1", ndjson(jsonLine(1, "web", "h1"), jsonLine(2, "db", "h-db"), jsonLine(3, "web", "h2")), false)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/api/v1/devices/"+s.a+"/logs?follow=true&service=web", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != serverapi.NDJSON {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// read returns the next n non-empty lines' messages, counting the
	// empty ones met on the way.
	blanks := 0
	read := func(n int) []string {
		t.Helper()
		var out []string
		for len(out) < n {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("the stream ended after %v", out)
				}
				if line == "" {
					blanks++
					continue
				}
				var l reeve.LogLine
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				out = append(out, l.Message)
			case <-time.After(30 * time.Second):
				t.Fatalf("%d lines in 30 s (%v), want %d", len(out), out, n)
			}
		}
		return out
	}
	if diff := cmp.Diff([]string{"h1", "h2"}, read(2)); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	e.mustPostLogs(s.a, s.keyA, "s1", ndjson(jsonLine(4, "db", "live-db"), jsonLine(5, "web", "live1")), true)
	e.mustPostLogs(s.b, s.keyB, "s1", ndjson(jsonLine(1, "web", "other device")), true)
	e.mustPostLogs(s.a, s.keyA, "s1", ndjson(jsonLine(5, "web", "dup"), jsonLine(6, "web", "live2")), false)
	if diff := cmp.Diff([]string{"live1", "live2"}, read(2)); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
	// Quiet: keep-alive lines come.
	for blanks < 2 {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("the stream ended")
			}
			if line != "" {
				t.Fatalf("unexpected line %q", line)
			}
			blanks++
		case <-time.After(30 * time.Second):
			t.Fatal("no keep-alive line in 30 s")
		}
	}
	// The typed client skips them.
	op := serverapi.NewClient(e.url, adminToken, nil)
	got := make(chan string, 10)
	cctx, ccancel := context.WithCancel(t.Context())
	defer ccancel()
	go func() {
		_ = op.Logs(cctx, s.a, serverapi.LogQuery{Follow: true, Limit: 1}, func(l reeve.LogLine) error {
			got <- l.Message
			return nil
		})
	}()
	select {
	case m := <-got:
		if m != "live2" {
			t.Errorf("client: %q, want live2", m)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client got nothing in 30 s")
	}
	// Removing the device removes its lines and ends its followers.
	e.must(204, "DELETE", "/api/v1/devices/"+s.a, adminToken, nil, nil)
	for range lines { // until the server ends the stream
	}
	e.must(201, "POST", "/device/register", s.provKey, serverapi.RegisterRequest{UUID: s.a, DeviceType: "generic-amd64", APIKey: s.keyA}, nil)
	sameMessages(t, "lines of the device registered again", []string{}, e.logsOf(s.a, ""))
	// Its stream starts afresh too.
	if ack := e.mustPostLogs(s.a, s.keyA, "s1", ndjson(jsonLine(1, "web", "new life")), false); ack.Stored != 1 {
		t.Errorf("after re-registering: %+v", ack)
	}
}

// Stopping the server ends its followers: their read ends without error.
func TestDeviceLogsFollowEndsWhenTheServerStops(t *testing.T) {
	m, stop := serverdtest.StartConfig(t, serverd.Config{AdminToken: adminToken})
	e := &env{t: t, m: m, url: m.URL()}
	s := e.setup()
	e.mustPostLogs(s.a, s.keyA, "", ndjson(jsonLine(0, "web", "one")), false)
	op := serverapi.NewClient(e.url, adminToken, nil)
	got := make(chan string, 10)
	ended := make(chan error, 1)
	go func() {
		ended <- op.Logs(context.Background(), s.a, serverapi.LogQuery{Follow: true}, func(l reeve.LogLine) error {
			got <- l.Message
			return nil
		})
	}()
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no history in 30 s")
	}
	if err := stop(); err != nil {
		t.Errorf("server stopped with %v", err)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("the follow ended with %v, want nil (the server ended it)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stopping the server did not end the follow")
	}
}

// The client's side against a fake server: how LogStream sends, how Logs
// asks and reads.

func TestLogStreamClientSendsChunkedAndUnbounded(t *testing.T) {
	type seen struct {
		chunked            bool
		length             int64
		ct, ce, stream, az string
		body               string
	}
	got := make(chan seen, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{len(r.TransferEncoding) == 1 && r.TransferEncoding[0] == "chunked", r.ContentLength,
			r.Header.Get("Content-Type"), r.Header.Get("Content-Encoding"), r.Header.Get(serverapi.LogStreamHeader), r.Header.Get("Authorization"), string(b)}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"stored":1,"duplicates":2,"last_seq":3}`)
	}))
	defer ts.Close()
	// A client whose timeout has passed before any request starts: a
	// stream must not be bound by it.
	c := serverapi.NewClient(ts.URL, "devkey", &http.Client{Timeout: time.Nanosecond})
	if _, err := c.Tags(t.Context(), strings.Repeat("a", 32)); err == nil {
		t.Fatal("a plain request beat a 1 ns timeout: the test proves nothing")
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, "{\"message\":\"x\"}\n")
		pw.Close()
	}()
	ack, err := c.LogStream(t.Context(), strings.Repeat("a", 32), "s-1", pr, true)
	if err != nil {
		t.Fatal(err)
	}
	if ack != (serverapi.LogAck{Stored: 1, Duplicates: 2, LastSeq: 3}) {
		t.Errorf("ack %+v", ack)
	}
	want := seen{true, -1, serverapi.NDJSON, "gzip", "s-1", "Bearer devkey", "{\"message\":\"x\"}\n"}
	if s := <-got; s != want {
		t.Errorf("the server saw %+v, want %+v", s, want)
	}
}

func TestLogsClientQueryAndKeepAlive(t *testing.T) {
	query := make(chan url.Values, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query <- r.URL.Query()
		w.Header().Set("Content-Type", serverapi.NDJSON)
		_, _ = io.WriteString(w, "\n"+`{"id":1,"message":"a"}`+"\n\n\n"+`{"id":2,"message":"b","stderr":true}`+"\n\n")
	}))
	defer ts.Close()
	c := serverapi.NewClient(ts.URL, "op", &http.Client{Timeout: time.Nanosecond})
	since := time.Date(2026, 11, 23, 15, 0, 0, 5, time.UTC)
	var got []reeve.LogLine
	err := c.Logs(t.Context(), strings.Repeat("a", 32), serverapi.LogQuery{
		Services: []string{"web", "db"}, System: true, Since: since, After: 41, Limit: 20, Follow: true,
	}, func(l reeve.LogLine) error {
		got = append(got, l)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != 1 || got[1].Message != "b" || !got[1].Stderr {
		t.Errorf("lines %+v", got)
	}
	want := url.Values{"service": {"web", "db"}, "system": {"true"}, "since": {"2026-11-23T15:00:00.000000005Z"},
		"after": {"41"}, "limit": {"20"}, "follow": {"true"}}
	if diff := cmp.Diff(want, <-query); diff != "" {
		t.Errorf("query (-want +got):\n%s", diff)
	}
}

// A body that stops sending without ending is ended by the server, with
// what came before it stored.
func TestLogStreamIdleBodyIsEnded(t *testing.T) {
	t.Cleanup(serverapi.SetLogBodyIdle(50 * time.Millisecond))
	e := newEnv(t)
	s := e.setup()
	dev := serverapi.NewClient(e.url, s.keyA, nil)
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan error, 1)
	go func() {
		_, err := dev.LogStream(t.Context(), s.a, "s1", pr, false)
		pr.CloseWithError(errors.New("request over"))
		done <- err
	}()
	// A whole line, then half of one, then silence.
	if _, err := io.WriteString(pw, jsonLine(1, "web", "before the silence")+"\n"+`{"message":"half`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if reeve.ErrorCode(err) != reeve.CodeInvalid || !strings.Contains(err.Error(), "sent nothing") {
			t.Errorf("err = %v, want invalid saying the body sent nothing", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an idle body was not ended")
	}
	sameMessages(t, "stored", []string{"before the silence"}, e.logsOf(s.a, ""))
}
