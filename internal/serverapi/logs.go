package serverapi

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/server"
)

// The device logs' routes: POST /device/v2/{uuid}/log-stream, which
// agents stream their lines into, and GET /api/v1/devices/{uuid}/logs,
// which serves them to operators (docs/api.md).

const (
	// LogStreamHeader names the agent's log stream in a log-stream
	// request; within it the server keeps each seq once.
	LogStreamHeader = "X-Reeve-Log-Stream"
	// MaxRawLogLine is the longest line of a log-stream body, before
	// its message is cut to reeve.MaxLogLineBytes. A message the agent
	// cut to that size may still take six times it in JSON (binary output
	// escaped as \u00XX), so it fits with room to spare.
	MaxRawLogLine = 128 << 10
	// NDJSON is the media type of log lines, one JSON object a line.
	NDJSON = "application/x-ndjson"
)

// LogAck answers a log-stream request once its body has ended.
type LogAck struct {
	// Stored counts the lines stored.
	Stored int `json:"stored"`
	// Duplicates counts the lines skipped because the server held them
	// already (their stream and seq).
	Duplicates int `json:"duplicates"`
	// LastSeq is the highest seq the server holds for the stream: the
	// agent may forget the lines up to it. For a gateway it is the
	// highest of its own lines' and of those of the dependent devices
	// whose lines the body held (an empty body: of every one it
	// carries), and at least the highest seq of the lines the body held
	// that were skipped.
	LastSeq uint64 `json:"last_seq"`
	// Skipped counts the lines not kept because they name a device the
	// sender does not carry (a dependent device removed since the agent
	// queued them): sending them again would not help.
	Skipped int `json:"skipped,omitempty"`
}

// LogQuery chooses what GET /api/v1/devices/{uuid}/logs returns.
type LogQuery struct {
	// Services keeps the lines of these services (all when empty).
	Services []string
	// System keeps only the agent's own lines.
	System bool
	// Since keeps the lines timestamped at or after it.
	Since time.Time
	// After keeps the lines stored after the line with this ID.
	After int64
	// Limit is how many of the newest lines that match to return
	// (oldest first); 0: the server's default, 1000.
	Limit int
	// Follow streams the lines stored after the history until the
	// context ends.
	Follow bool
}

// values is the query's URL query.
func (q LogQuery) values() url.Values {
	v := url.Values{}
	for _, s := range q.Services {
		v.Add("service", s)
	}
	if q.System {
		v.Set("system", "true")
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Follow {
		v.Set("follow", "true")
	}
	return v
}

// ---- device API: POST /device/v2/{uuid}/log-stream ----

// Lines are committed in batches of at most this many lines or bytes;
// a batch is committed earlier as soon as no whole line is waiting to be
// read, so that what the agent flushed is visible at once.
const (
	maxIngestLines = 1000
	maxIngestBytes = 1 << 20
)

// logBodyIdle is how long (in nanoseconds) a log-stream body may send
// nothing before the server ends the request: a request has no other
// bound. Tests shorten it.
var logBodyIdle atomic.Int64

// wireLogLine is a line as the agent sends it: Message is required.
// Fields the server does not know are ignored, so that newer agents can
// add some.
type wireLogLine struct {
	Device    string    `json:"device"`
	Seq       uint64    `json:"seq"`
	Timestamp time.Time `json:"timestamp"`
	Service   string    `json:"service"`
	Stderr    bool      `json:"stderr"`
	System    bool      `json:"system"`
	Message   *string   `json:"message"`
}

func (h *Handler) logStream(w http.ResponseWriter, r *http.Request) {
	// An answer before the body ended closes the connection: a streamed
	// body has no end the server could skip to.
	fail := func(err error) {
		w.Header().Set("Connection", "close")
		h.fail(w, err)
	}
	if bearer(r) == "" { // before reading a body from who knows whom
		fail(reeve.Errorf(reeve.CodeUnauthorized, "a device key is required: send Authorization: Bearer <device key>"))
		return
	}
	d, err := h.authDevice(r, r.PathValue("uuid"))
	if err != nil {
		fail(err)
		return
	}
	in, err := h.s.LogIngest(d, r.Header.Get(LogStreamHeader))
	if err != nil {
		fail(err)
		return
	}
	var body io.Reader = r.Body
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r.Body)
		switch {
		case errors.Is(err, io.EOF): // an empty body
			body = http.NoBody
		case err != nil:
			fail(reeve.Errorf(reeve.CodeInvalid, "the body is not gzip, as Content-Encoding says: %v", err))
			return
		default:
			defer zr.Close()
			body = zr
		}
	default:
		fail(reeve.Errorf(reeve.CodeInvalid, "Content-Encoding %q is not supported: send the lines plain or gzip-compressed", enc))
		return
	}

	ctx := r.Context()
	rc := http.NewResponseController(w)
	var (
		ack        LogAck
		pending    []reeve.LogLine
		size       int
		commits    int
		skippedSeq uint64 // the highest seq of the lines skipped
	)
	// flush stores the lines read so far.
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		res, err := in.Append(ctx, pending)
		pending, size = nil, 0 // a new slice: the writer may still hold the old one
		commits++
		if err != nil {
			return err
		}
		ack.Stored += len(res.Stored)
		ack.Duplicates += res.Duplicates
		ack.LastSeq = max(ack.LastSeq, res.LastSeq)
		return nil
	}
	// failStore answers a failure to store lines.
	failStore := func(err error) {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return // the agent went away: no one to answer
		}
		fail(err)
	}
	// flushThen stores the lines read so far and answers err: the lines
	// before a bad one are stored. (A read error or time-out cancels
	// ctx, but comes only when nothing is pending: lines are stored
	// before every read that may wait.)
	flushThen := func(err error) {
		if ferr := flush(); ferr != nil {
			failStore(ferr)
			return
		}
		fail(err)
	}
	br := bufio.NewReaderSize(body, MaxRawLogLine+2) // the longest line with its "\r\n"
	for n := 1; ; n++ {
		if len(pending) >= maxIngestLines || size >= maxIngestBytes || (len(pending) > 0 && !lineBuffered(br)) {
			if err := flush(); err != nil {
				failStore(err)
				return
			}
		}
		idle := time.Duration(logBodyIdle.Load())
		if !lineBuffered(br) {
			// The next read may wait for the agent.
			_ = rc.SetReadDeadline(time.Now().Add(idle))
		}
		raw, rerr := br.ReadSlice('\n')
		if rerr != nil {
			_ = rc.SetReadDeadline(time.Time{})
		}
		switch {
		case rerr == nil, errors.Is(rerr, io.EOF): // a whole line, or the last one
		case errors.Is(rerr, bufio.ErrBufferFull):
			flushThen(lineTooLong(n))
			return
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			flushThen(reeve.Errorf(reeve.CodeInvalid, "the body sent nothing for %s: end a request when there is nothing to send (the lines before are stored)", idle))
			return
		default: // what was read of the line is not all of it
			flushThen(bodyError(rerr))
			return
		}
		if line := bytes.TrimRight(raw, "\r\n"); len(bytes.TrimSpace(line)) > 0 {
			if len(line) > MaxRawLogLine {
				flushThen(lineTooLong(n))
				return
			}
			l, err := parseLogLine(line, n)
			if err == nil {
				err = in.Check(ctx, &l)
				if errors.Is(err, server.ErrNotCarried) {
					// Not an error of the agent's: it queued the line
					// while it still carried the device. Acked with
					// the rest, so that it is not sent again.
					ack.Skipped++
					skippedSeq = max(skippedSeq, l.Seq)
					continue
				}
				if reeve.ErrorCode(err) == reeve.CodeInvalid {
					err = reeve.Errorf(reeve.CodeInvalid, "line %d: %v (the lines before it are stored)", n, err)
				}
			}
			if err != nil {
				flushThen(err)
				return
			}
			pending = append(pending, l)
			size += len(line)
		}
		if errors.Is(rerr, io.EOF) {
			if err := flush(); err != nil {
				failStore(err)
				return
			}
			if commits == 0 && r.Header.Get(LogStreamHeader) != "" {
				// No line at all: the answer still says how far the
				// stream is stored.
				res, err := in.Append(ctx, nil)
				if err != nil {
					failStore(err)
					return
				}
				ack.LastSeq = res.LastSeq
			}
			ack.LastSeq = max(ack.LastSeq, skippedSeq)
			httpx.WriteJSON(w, http.StatusOK, ack)
			return
		}
	}
}

func lineTooLong(n int) error {
	return reeve.Errorf(reeve.CodeTooLarge, "line %d is longer than %d bytes: cut messages to %d bytes (the lines before it are stored)", n, MaxRawLogLine, reeve.MaxLogLineBytes)
}

// lineBuffered reports whether a whole line waits in br: reading it does
// not wait for the agent.
func lineBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// parseLogLine decodes line n of a log-stream body.
func parseLogLine(line []byte, n int) (reeve.LogLine, error) {
	const stored = "(the lines before it are stored)"
	var wl wireLogLine
	err := json.Unmarshal(line, &wl)
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case err == nil:
	case errors.As(err, &se) || bytes.TrimSpace(line)[0] != '{':
		return reeve.LogLine{}, reeve.Errorf(reeve.CodeInvalid, "line %d is not a JSON object (%s): send one log line a line, as {\"message\": \"…\"} %s",
			n, strings.TrimPrefix(err.Error(), "json: "), stored)
	case errors.As(err, &te) && te.Field != "":
		return reeve.LogLine{}, reeve.Errorf(reeve.CodeInvalid, "line %d: %s: a JSON %s where a %s belongs %s", n, te.Field, te.Value, te.Type, stored)
	default:
		return reeve.LogLine{}, reeve.Errorf(reeve.CodeInvalid, "line %d: %s %s", n, strings.TrimPrefix(err.Error(), "json: "), stored)
	}
	if wl.Message == nil {
		return reeve.LogLine{}, reeve.Errorf(reeve.CodeInvalid, "line %d has no message %s", n, stored)
	}
	return reeve.LogLine{
		Device: wl.Device, Seq: wl.Seq, Timestamp: wl.Timestamp, Service: wl.Service,
		Stderr: wl.Stderr, System: wl.System, Message: *wl.Message,
	}, nil
}

// bodyError says what went wrong reading a log-stream body.
func bodyError(err error) error {
	var ce flate.CorruptInputError
	if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &ce) {
		return reeve.Errorf(reeve.CodeInvalid, "the body is not valid gzip: %v (the lines before it are stored)", err)
	}
	return reeve.Errorf(reeve.CodeInvalid, "read body: %v (the lines before it are stored)", err)
}

// ---- operator API: GET /api/v1/devices/{uuid}/logs ----

// logKeepAlive is how long (in nanoseconds) a followed log stays silent
// before the server sends an empty line, which keeps proxies and clients
// from timing out. Tests shorten it.
var logKeepAlive atomic.Int64

func init() {
	logKeepAlive.Store(int64(30 * time.Second))
	logBodyIdle.Store(int64(2 * time.Minute))
}

// logWriteTimeout bounds each write to a log reader: one that does not
// read for this long is cut off.
const logWriteTimeout = time.Minute

func (h *Handler) deviceLogs(w http.ResponseWriter, r *http.Request) error {
	q, follow, err := parseLogQuery(r.URL.Query(), time.Now())
	if err != nil {
		return err
	}
	uuid := r.PathValue("uuid")
	ctx := r.Context()
	rc := http.NewResponseController(w)
	if !follow {
		lines, err := h.s.DeviceLogs(ctx, uuid, q)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", NDJSON)
		w.WriteHeader(http.StatusOK)
		_ = writeLogLines(w, rc, lines)
		return nil
	}
	f, hist, err := h.s.FollowLogs(ctx, uuid, q)
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", NDJSON)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: pass lines on as they come
	w.WriteHeader(http.StatusOK)
	// From here on the answer is under way: what ends it ends it
	// silently, as a client that goes does.
	if err := writeLogLines(w, rc, hist); err != nil {
		return nil
	}
	for {
		lines, err := f.Next(ctx, time.Duration(logKeepAlive.Load()))
		if err != nil {
			if ctx.Err() == nil {
				h.log.Debug("log follow ended", "device", uuid, "err", err)
			}
			return nil
		}
		if lines == nil {
			lines = []reeve.LogLine{} // an empty line: keep-alive
		}
		if err := writeLogLines(w, rc, lines); err != nil {
			return nil
		}
	}
}

// writeLogLines writes lines as NDJSON and flushes; no lines writes an
// empty line.
func writeLogLines(w http.ResponseWriter, rc *http.ResponseController, lines []reeve.LogLine) error {
	_ = rc.SetWriteDeadline(time.Now().Add(logWriteTimeout))
	var buf bytes.Buffer
	if len(lines) == 0 {
		buf.WriteByte('\n')
	}
	enc := json.NewEncoder(&buf) // one object a line, each ending in "\n"
	for _, l := range lines {
		if err := enc.Encode(l); err != nil {
			return err
		}
		if buf.Len() >= 64<<10 {
			if _, err := w.Write(buf.Bytes()); err != nil {
				return err
			}
			buf.Reset()
		}
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return err
	}
	return rc.Flush()
}

// parseLogQuery reads the query of GET /api/v1/devices/{uuid}/logs.
func parseLogQuery(v url.Values, now time.Time) (server.LogQuery, bool, error) {
	var q server.LogQuery
	for _, s := range v["service"] {
		if s == "" {
			return q, false, reeve.Errorf(reeve.CodeInvalid, "service: give a service name (service=web), repeat it for several")
		}
		q.Services = append(q.Services, s)
	}
	var err error
	if q.System, err = boolParam(v, "system"); err != nil {
		return q, false, err
	}
	follow, err := boolParam(v, "follow")
	if err != nil {
		return q, false, err
	}
	if s := v.Get("since"); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			q.Since = t
		} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
			q.Since = now.Add(-d)
		} else {
			return q, false, reeve.Errorf(reeve.CodeInvalid, "since: %q is neither an RFC 3339 time (2026-11-23T15:04:05Z) nor a duration such as 10m", s)
		}
	}
	if s := v.Get("after"); s != "" {
		if q.After, err = strconv.ParseInt(s, 10, 64); err != nil || q.After < 0 {
			return q, false, reeve.Errorf(reeve.CodeInvalid, "after: %q is not a line id", s)
		}
	}
	if s := v.Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit < 1 || q.Limit > server.MaxLogLimit {
			return q, false, reeve.Errorf(reeve.CodeInvalid, "limit: %q is not a number of lines from 1 to %d", s, server.MaxLogLimit)
		}
	}
	return q, follow, nil
}

func boolParam(v url.Values, name string) (bool, error) {
	s := v.Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, reeve.Errorf(reeve.CodeInvalid, "%s: %q is not true or false", name, s)
	}
	return b, nil
}
