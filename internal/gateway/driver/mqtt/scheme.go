package mqtt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"reeve.dev/reeve/internal/gateway/driver"
)

// The topic scheme (docs/mqtt.md): everything of one app lives under
// <prefix>/<app uuid>/<local id>/<leaf>.
const (
	leafStatus = "status" // device → gateway, retained
	leafLogs   = "logs"   // device → gateway
	leafAck    = "ack"    // device → gateway, firmware acknowledgements
	leafResult = "result" // device → gateway, update results
	leafCmd    = "cmd"    // gateway → device
	leafFw     = "fw"     // gateway → device: fw/<n>, firmware chunk n
)

// kind is what a topic of the scheme carries.
type kind int

const (
	kindStatus kind = iota + 1
	kindLogs
	kindAck
	kindResult
	kindCmd
	kindChunk
)

func (k kind) String() string {
	switch k {
	case kindStatus:
		return leafStatus
	case kindLogs:
		return leafLogs
	case kindAck:
		return leafAck
	case kindResult:
		return leafResult
	case kindCmd:
		return leafCmd
	case kindChunk:
		return "firmware chunk"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// topics builds and parses the topics of one app.
type topics struct {
	base string // <prefix>/<app uuid>
}

func newTopics(prefix, appUUID string) topics { return topics{base: prefix + "/" + appUUID} }

// filter is what the gateway subscribes to.
func (t topics) filter() string { return t.base + "/#" }

func (t topics) device(id, leaf string) string { return t.base + "/" + id + "/" + leaf }

func (t topics) status(id string) string { return t.device(id, leafStatus) }
func (t topics) logs(id string) string   { return t.device(id, leafLogs) }
func (t topics) ack(id string) string    { return t.device(id, leafAck) }
func (t topics) result(id string) string { return t.device(id, leafResult) }
func (t topics) cmd(id string) string    { return t.device(id, leafCmd) }
func (t topics) chunk(id string, n int) string {
	return t.device(id, leafFw+"/"+strconv.Itoa(n))
}

// parse splits a topic of the app into the device's local ID and what the
// topic carries (with the chunk number for a firmware chunk). A topic that
// is not in the scheme is an error; id is still set when the topic names a
// device, so that the error can name it.
func (t topics) parse(topic string) (id string, k kind, chunk int, err error) {
	rest, ok := strings.CutPrefix(topic, t.base+"/")
	if !ok {
		return "", 0, 0, fmt.Errorf("topic %q is not under %s/", topic, t.base)
	}
	id, leaf, ok := strings.Cut(rest, "/")
	switch {
	case id == "":
		return "", 0, 0, fmt.Errorf("topic %q names no device", topic)
	case !ok:
		return id, 0, 0, fmt.Errorf("topic %q is not in the scheme (nothing after the device)", topic)
	}
	switch leaf {
	case leafStatus:
		return id, kindStatus, 0, nil
	case leafLogs:
		return id, kindLogs, 0, nil
	case leafAck:
		return id, kindAck, 0, nil
	case leafResult:
		return id, kindResult, 0, nil
	case leafCmd:
		return id, kindCmd, 0, nil
	}
	if num, ok := strings.CutPrefix(leaf, leafFw+"/"); ok {
		if n, err := strconv.Atoi(num); err == nil && n >= 0 && strconv.Itoa(n) == num {
			return id, kindChunk, n, nil
		}
	}
	return id, 0, 0, fmt.Errorf("topic %q is not in the scheme (unknown %q)", topic, leaf)
}

// validLevel says whether s can be one level of a topic: an app UUID, a
// local ID, a prefix level.
func validLevel(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.ContainsAny(s, "/+#\x00")
}

// validPrefix says whether s can be the scheme's prefix: one or more
// levels, without wildcards, not starting with $ (the broker's own).
func validPrefix(s string) bool {
	if s == "" || strings.HasPrefix(s, "$") {
		return false
	}
	for l := range strings.SplitSeq(s, "/") {
		if !validLevel(l) {
			return false
		}
	}
	return true
}

// statusMsg is a device's status (retained on …/status). Online is
// required; an online status is the device's whole account of itself,
// while an offline one (the Last Will) changes only what it carries.
type statusMsg struct {
	Online     bool
	Commit     *string
	DeviceType *string
	Info       map[string]string // nil when absent
}

func parseStatus(b []byte) (statusMsg, error) {
	var raw struct {
		Online     *bool                      `json:"online"`
		Commit     *string                    `json:"commit"`
		DeviceType *string                    `json:"device_type"`
		Info       map[string]json.RawMessage `json:"info"`
	}
	if err := strictJSON(b, &raw); err != nil {
		return statusMsg{}, fmt.Errorf("status: %w", err)
	}
	if raw.Online == nil {
		return statusMsg{}, errors.New(`status: no "online"`)
	}
	st := statusMsg{Online: *raw.Online, Commit: raw.Commit, DeviceType: raw.DeviceType}
	if raw.Info != nil {
		st.Info = make(map[string]string, len(raw.Info))
		for k, v := range raw.Info {
			st.Info[k] = scalar(v)
		}
	}
	return st, nil
}

// scalar renders an info value as text: a string as itself, anything
// else (a number, true, an object) as its JSON.
func scalar(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(v)
}

// parseLogs reads a logs message: one JSON object per line. Lines that are
// not valid are returned as errors, the others as lines; now stamps lines
// that carry no time.
func parseLogs(b []byte, now time.Time) ([]driver.LogLine, []error) {
	var (
		lines []driver.LogLine
		errs  []error
	)
	for i, l := range bytes.Split(b, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		var raw struct {
			TS      *float64 `json:"ts"`
			Message *string  `json:"message"`
			System  bool     `json:"system"`
		}
		if err := strictJSON(l, &raw); err != nil {
			errs = append(errs, fmt.Errorf("log line %d: %w", i+1, err))
			continue
		}
		if raw.Message == nil {
			errs = append(errs, fmt.Errorf(`log line %d: no "message"`, i+1))
			continue
		}
		t := now
		if raw.TS != nil && *raw.TS > 0 && *raw.TS < math.MaxInt64/1e9 {
			sec, frac := math.Modf(*raw.TS)
			t = time.Unix(int64(sec), int64(frac*1e9))
		}
		lines = append(lines, driver.LogLine{Time: t, Message: *raw.Message, System: raw.System})
	}
	return lines, errs
}

// ackMsg is a device's firmware acknowledgement (…/ack). Without Chunk it
// answers an update command: the device holds chunks 0…Next-1 already.
// With Chunk it acknowledges that chunk: CRC32 is the CRC-32 (IEEE) of
// what it stored, and Next is again how many chunks it holds from the
// start.
type ackMsg struct {
	Commit string
	Next   int
	Chunk  *int
	CRC32  *uint32
}

func parseAck(b []byte) (ackMsg, error) {
	var raw struct {
		Commit *string `json:"commit"`
		Next   *int    `json:"next"`
		Chunk  *int    `json:"chunk"`
		CRC32  *uint32 `json:"crc32"`
	}
	if err := strictJSON(b, &raw); err != nil {
		return ackMsg{}, fmt.Errorf("ack: %w", err)
	}
	switch {
	case raw.Commit == nil:
		return ackMsg{}, errors.New(`ack: no "commit"`)
	case raw.Next == nil:
		return ackMsg{}, errors.New(`ack: no "next"`)
	case *raw.Next < 0:
		return ackMsg{}, fmt.Errorf("ack: next %d", *raw.Next)
	case raw.Chunk != nil && *raw.Chunk < 0:
		return ackMsg{}, fmt.Errorf("ack: chunk %d", *raw.Chunk)
	}
	return ackMsg{Commit: *raw.Commit, Next: *raw.Next, Chunk: raw.Chunk, CRC32: raw.CRC32}, nil
}

// resultMsg is how an install ended, by the device's account (…/result).
type resultMsg struct {
	Commit string
	OK     bool
	Reason string
}

func parseResult(b []byte) (resultMsg, error) {
	var raw struct {
		Commit *string `json:"commit"`
		OK     *bool   `json:"ok"`
		Reason string  `json:"reason"`
	}
	if err := strictJSON(b, &raw); err != nil {
		return resultMsg{}, fmt.Errorf("result: %w", err)
	}
	switch {
	case raw.Commit == nil:
		return resultMsg{}, errors.New(`result: no "commit"`)
	case raw.OK == nil:
		return resultMsg{}, errors.New(`result: no "ok"`)
	}
	r := resultMsg{Commit: *raw.Commit, OK: *raw.OK, Reason: raw.Reason}
	if !r.OK && r.Reason == "" {
		r.Reason = "the device gave no reason"
	}
	return r, nil
}

// strictJSON decodes one JSON object and nothing after it.
func strictJSON(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("invalid JSON: data after the object")
	}
	return nil
}

// Commands (gateway → device, on …/cmd), one JSON object each.
const (
	cmdRestart   = "restart"
	cmdIdentify  = "identify"
	cmdConfigure = "configure"
	cmdUpdate    = "update"
)

// simpleCmd is restart or identify.
func simpleCmd(name string) []byte {
	b, _ := json.Marshal(struct {
		Cmd string `json:"cmd"`
	}{name})
	return b
}

// configureCmd carries both maps always (empty, not absent, when empty).
func configureCmd(env, config map[string]string) []byte {
	if env == nil {
		env = map[string]string{}
	}
	if config == nil {
		config = map[string]string{}
	}
	b, _ := json.Marshal(struct {
		Cmd    string            `json:"cmd"`
		Env    map[string]string `json:"env"`
		Config map[string]string `json:"config"`
	}{cmdConfigure, env, config})
	return b
}

// updateCmd starts (or resumes) a firmware transfer.
type updateCmd struct {
	Cmd       string `json:"cmd"` // "update"
	Commit    string `json:"commit"`
	Size      int64  `json:"size"`
	SHA256    string `json:"sha256"`
	ChunkSize int    `json:"chunk_size"`
	Chunks    int    `json:"chunks"`
}

func (c updateCmd) encode() []byte {
	c.Cmd = cmdUpdate
	b, _ := json.Marshal(c)
	return b
}
