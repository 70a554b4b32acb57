package lwm2m

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Content formats (OMA LwM2M 1.0 §6.4, 1.1 §7.4). The 15xx numbers are the
// ones pre-1.0 clients (lwm2m-node-lib among them) still use.
const (
	cfText         = 0
	cfLinkFormat   = 40
	cfOpaque       = 42
	cfSenMLJSON    = 110
	cfTLV          = 11542
	cfOMAJSON      = 11543
	cfLegacyText   = 1541
	cfLegacyTLV    = 1542
	cfLegacyJSON   = 1543
	cfLegacyOpaque = 1544
)

// TLVType is the kind of a TLV entry (OMA LwM2M 1.0 §6.4.3, bits 7-6 of
// the type byte).
type TLVType uint8

const (
	TLVObjectInstance   TLVType = 0 // holds resources
	TLVResourceInstance TLVType = 1 // one instance of a multiple resource
	TLVMultipleResource TLVType = 2 // holds resource instances
	TLVResource         TLVType = 3 // a resource with its value
)

// TLV is one entry of the LwM2M TLV format: a value for the resource
// kinds, children for the container kinds.
type TLV struct {
	Type     TLVType
	ID       uint16
	Value    []byte
	Children []TLV
}

// maxTLVLength is what the 24-bit length field can say.
const maxTLVLength = 1<<24 - 1

// DecodeTLV parses a TLV payload. It refuses truncated entries and
// containers holding what the spec does not allow in them (an object
// instance holds resources and multiple resources, a multiple resource
// holds resource instances).
func DecodeTLV(b []byte) ([]TLV, error) {
	return decodeTLV(b, nil)
}

func decodeTLV(b []byte, parent *TLVType) ([]TLV, error) {
	var out []TLV
	for len(b) > 0 {
		h := b[0]
		t := TLV{Type: TLVType(h >> 6)}
		if parent != nil {
			switch *parent {
			case TLVObjectInstance:
				if t.Type != TLVResource && t.Type != TLVMultipleResource {
					return nil, fmt.Errorf("tlv: type %d inside an object instance", t.Type)
				}
			case TLVMultipleResource:
				if t.Type != TLVResourceInstance {
					return nil, fmt.Errorf("tlv: type %d inside a multiple resource", t.Type)
				}
			}
		}
		i := 1
		idLen := 1
		if h&0x20 != 0 {
			idLen = 2
		}
		if len(b) < i+idLen {
			return nil, errors.New("tlv: truncated identifier")
		}
		if idLen == 1 {
			t.ID = uint16(b[i])
		} else {
			t.ID = binary.BigEndian.Uint16(b[i:])
		}
		i += idLen
		var n int
		switch lt := int(h>>3) & 3; lt {
		case 0:
			n = int(h & 7)
		default:
			if len(b) < i+lt {
				return nil, errors.New("tlv: truncated length")
			}
			for k := range lt {
				n = n<<8 | int(b[i+k])
			}
			i += lt
		}
		if len(b)-i < n {
			return nil, fmt.Errorf("tlv: entry %d says %d bytes, %d left", t.ID, n, len(b)-i)
		}
		v := b[i : i+n]
		b = b[i+n:]
		if t.Type == TLVObjectInstance || t.Type == TLVMultipleResource {
			kids, err := decodeTLV(v, &t.Type)
			if err != nil {
				return nil, err
			}
			t.Children = kids
		} else {
			t.Value = v
		}
		out = append(out, t)
	}
	return out, nil
}

// EncodeTLV writes entries in the TLV format, with the shortest
// identifier and length fields.
func EncodeTLV(ts []TLV) ([]byte, error) {
	var out []byte
	for _, t := range ts {
		if t.Type > TLVResource {
			return nil, fmt.Errorf("tlv: bad type %d", t.Type)
		}
		v := t.Value
		if t.Type == TLVObjectInstance || t.Type == TLVMultipleResource {
			var err error
			if v, err = EncodeTLV(t.Children); err != nil {
				return nil, err
			}
		}
		if len(v) > maxTLVLength {
			return nil, fmt.Errorf("tlv: entry %d too long (%d bytes)", t.ID, len(v))
		}
		h := byte(t.Type) << 6
		var id []byte
		if t.ID > 0xff {
			h |= 0x20
			id = []byte{byte(t.ID >> 8), byte(t.ID)}
		} else {
			id = []byte{byte(t.ID)}
		}
		var ln []byte
		switch n := len(v); {
		case n < 8:
			h |= byte(n)
		case n <= 0xff:
			h |= 1 << 3
			ln = []byte{byte(n)}
		case n <= 0xffff:
			h |= 2 << 3
			ln = []byte{byte(n >> 8), byte(n)}
		default:
			h |= 3 << 3
			ln = []byte{byte(n >> 16), byte(n >> 8), byte(n)}
		}
		out = append(out, h)
		out = append(out, id...)
		out = append(out, ln...)
		out = append(out, v...)
	}
	return out, nil
}

// TLVInt reads a TLV integer: 1, 2, 4 or 8 bytes, two's complement, big
// endian.
func TLVInt(b []byte) (int64, error) {
	switch len(b) {
	case 1:
		return int64(int8(b[0])), nil
	case 2:
		return int64(int16(binary.BigEndian.Uint16(b))), nil
	case 4:
		return int64(int32(binary.BigEndian.Uint32(b))), nil
	case 8:
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	return 0, fmt.Errorf("tlv: integer of %d bytes", len(b))
}

// TLVIntBytes writes v in the fewest bytes TLVInt reads back.
func TLVIntBytes(v int64) []byte {
	switch {
	case v >= math.MinInt8 && v <= math.MaxInt8:
		return []byte{byte(v)}
	case v >= math.MinInt16 && v <= math.MaxInt16:
		return binary.BigEndian.AppendUint16(nil, uint16(v))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		return binary.BigEndian.AppendUint32(nil, uint32(v))
	}
	return binary.BigEndian.AppendUint64(nil, uint64(v))
}

// value is one resource's value as a device sent it: text (plain text,
// JSON) or TLV bytes, whose meaning depends on the resource's type.
type value struct {
	text string
	raw  []byte
	tlv  bool
}

// String reads a string resource.
func (v value) String() string {
	if v.tlv {
		return string(v.raw)
	}
	return v.text
}

// Int reads an integer resource.
func (v value) Int() (int64, error) {
	if v.tlv {
		return TLVInt(v.raw)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v.text), 10, 64)
	if err != nil {
		// JSON numbers may come as 2.0.
		f, ferr := strconv.ParseFloat(strings.TrimSpace(v.text), 64)
		if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return 0, fmt.Errorf("not an integer: %q", v.text)
		}
		return int64(f), nil
	}
	return n, nil
}

// decodeResource reads a single resource's value (path /O/I/R) from a
// read response in format cf (hasCF false: no Content-Format option,
// which LwM2M reads as plain text).
func decodeResource(cf int, hasCF bool, body []byte, p path) (value, error) {
	if !hasCF {
		cf = cfText
	}
	switch cf {
	case cfText, cfLegacyText, cfOpaque, cfLegacyOpaque:
		return value{text: string(body)}, nil
	}
	vals, err := decodeResources(cf, body, p[:2])
	if err != nil {
		return value{}, err
	}
	v, ok := vals[p[2]]
	if !ok {
		return value{}, fmt.Errorf("%s is not in the response", p)
	}
	return v, nil
}

// decodeResources reads the single-instance resources of object instance
// inst (/O/I) from a TLV, SenML JSON or OMA JSON payload, by resource ID.
// Multiple resources are skipped: the driver reads none.
func decodeResources(cf int, body []byte, inst path) (map[uint16]value, error) {
	out := map[uint16]value{}
	switch cf {
	case cfTLV, cfLegacyTLV:
		ts, err := DecodeTLV(body)
		if err != nil {
			return nil, err
		}
		if len(ts) == 1 && ts[0].Type == TLVObjectInstance {
			if ts[0].ID != inst[1] {
				return nil, fmt.Errorf("tlv: instance %d, want %d", ts[0].ID, inst[1])
			}
			ts = ts[0].Children
		}
		for _, t := range ts {
			switch t.Type {
			case TLVResource:
				out[t.ID] = value{raw: t.Value, tlv: true}
			case TLVMultipleResource:
			default:
				return nil, fmt.Errorf("tlv: type %d where resources belong", t.Type)
			}
		}
		return out, nil
	case cfSenMLJSON:
		return decodeSenML(body, inst, out)
	case cfOMAJSON, cfLegacyJSON:
		return decodeOMAJSON(body, inst, out)
	}
	return nil, fmt.Errorf("content format %d is not one the driver reads resources from", cf)
}

// senmlRecord is one SenML record (RFC 8428) as LwM2M 1.1 uses it.
type senmlRecord struct {
	BaseName string   `json:"bn"`
	Name     string   `json:"n"`
	Number   *float64 `json:"v"`
	String   *string  `json:"vs"`
	Bool     *bool    `json:"vb"`
	Data     *string  `json:"vd"`
	ObjLink  *string  `json:"vlo"`
}

func decodeSenML(body []byte, inst path, out map[uint16]value) (map[uint16]value, error) {
	var recs []senmlRecord
	if err := json.Unmarshal(body, &recs); err != nil {
		return nil, fmt.Errorf("senml: %w", err)
	}
	bn := ""
	for _, r := range recs {
		if r.BaseName != "" {
			bn = r.BaseName
		}
		var v value
		switch {
		case r.String != nil:
			v.text = *r.String
		case r.Number != nil:
			v.text = strconv.FormatFloat(*r.Number, 'f', -1, 64)
		case r.Bool != nil:
			v.text = strconv.FormatBool(*r.Bool)
		case r.Data != nil:
			b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(*r.Data, "="))
			if err != nil {
				return nil, fmt.Errorf("senml: vd: %w", err)
			}
			v.text = string(b)
		case r.ObjLink != nil:
			v.text = *r.ObjLink
		default:
			continue
		}
		putResource(out, bn+r.Name, inst, v)
	}
	return out, nil
}

// omaJSON is the LwM2M 1.0 JSON format (application/vnd.oma.lwm2m+json).
type omaJSON struct {
	BaseName string `json:"bn"`
	E        []struct {
		Name    string   `json:"n"`
		Number  *float64 `json:"v"`
		String  *string  `json:"sv"`
		Bool    *bool    `json:"bv"`
		ObjLink *string  `json:"ov"`
	} `json:"e"`
}

func decodeOMAJSON(body []byte, inst path, out map[uint16]value) (map[uint16]value, error) {
	var doc omaJSON
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("lwm2m json: %w", err)
	}
	for _, e := range doc.E {
		var v value
		switch {
		case e.String != nil:
			v.text = *e.String
		case e.Number != nil:
			v.text = strconv.FormatFloat(*e.Number, 'f', -1, 64)
		case e.Bool != nil:
			v.text = strconv.FormatBool(*e.Bool)
		case e.ObjLink != nil:
			v.text = *e.ObjLink
		default:
			continue
		}
		putResource(out, doc.BaseName+e.Name, inst, v)
	}
	return out, nil
}

// putResource keeps v when name is a resource of inst (/O/I/R).
func putResource(out map[uint16]value, name string, inst path, v value) {
	p, err := parsePath(name)
	if err != nil || len(p) != 3 || p[0] != inst[0] || p[1] != inst[1] {
		return
	}
	out[p[2]] = v
}

// path is an LwM2M path: object, instance, resource, resource instance;
// one to four parts.
type path []uint16

func (p path) String() string {
	var b strings.Builder
	for _, n := range p {
		b.WriteByte('/')
		b.WriteString(strconv.Itoa(int(n)))
	}
	return b.String()
}

// parsePath reads "/3/0/1" (the leading slash may be left out).
func parsePath(s string) (path, error) {
	s = strings.TrimPrefix(s, "/")
	if s == "" {
		return nil, errors.New("empty path")
	}
	parts := strings.Split(s, "/")
	if len(parts) > 4 {
		return nil, fmt.Errorf("path %q: more than 4 parts", s)
	}
	p := make(path, len(parts))
	for i, part := range parts {
		n, err := strconv.ParseUint(part, 10, 16)
		if err != nil || (len(part) > 1 && part[0] == '0') {
			return nil, fmt.Errorf("path %q: bad part %q", s, part)
		}
		p[i] = uint16(n)
	}
	return p, nil
}

// Link is one link of a CoRE link format document (RFC 6690).
type Link struct {
	URI    string
	Params map[string]string // a parameter without a value maps to ""
}

// ParseLinks reads a CoRE link format document. An empty document has no
// links.
func ParseLinks(s string) ([]Link, error) {
	var links []Link
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
			i++
		}
	}
	skip()
	if i == len(s) {
		return nil, nil
	}
	for {
		skip()
		if i >= len(s) || s[i] != '<' {
			return nil, fmt.Errorf("link format: want '<' at byte %d", i)
		}
		end := strings.IndexByte(s[i:], '>')
		if end < 0 {
			return nil, errors.New("link format: unterminated '<'")
		}
		l := Link{URI: s[i+1 : i+end], Params: map[string]string{}}
		if strings.ContainsAny(l.URI, "<\" ,") {
			return nil, fmt.Errorf("link format: bad URI %q", l.URI)
		}
		i += end + 1
		for {
			skip()
			if i >= len(s) || s[i] != ';' {
				break
			}
			i++
			skip()
			start := i
			for i < len(s) && isNameChar(s[i]) {
				i++
			}
			name := s[start:i]
			if name == "" {
				return nil, fmt.Errorf("link format: empty parameter name at byte %d", i)
			}
			val := ""
			if i < len(s) && s[i] == '=' {
				i++
				if i < len(s) && s[i] == '"' {
					var b strings.Builder
					i++
					for {
						if i >= len(s) {
							return nil, errors.New("link format: unterminated quoted string")
						}
						c := s[i]
						i++
						if c == '"' {
							break
						}
						if c == '\\' && i < len(s) {
							c = s[i]
							i++
						}
						b.WriteByte(c)
					}
					val = b.String()
				} else {
					start := i
					for i < len(s) && s[i] > ' ' && s[i] < 0x7f && !strings.ContainsRune(";,\"", rune(s[i])) {
						i++
					}
					val = s[start:i]
				}
			}
			l.Params[name] = val
		}
		links = append(links, l)
		skip()
		if i == len(s) {
			return links, nil
		}
		if s[i] != ',' {
			return nil, fmt.Errorf("link format: unexpected %q at byte %d", s[i], i)
		}
		i++
	}
}

// isNameChar says whether c may be part of a link parameter name (an
// RFC 5987 attr-char).
func isNameChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$&+-.^_`|~*", c) >= 0
}

// registeredObjects reads a registration payload: the alternate root
// path (a link with rt="oma.lwm2m", "" for none) and the object and
// object instance paths under it. Links that are not LwM2M paths are
// ignored, as the spec allows.
func registeredObjects(payload string) (root string, objs []string, err error) {
	links, err := ParseLinks(payload)
	if err != nil {
		return "", nil, err
	}
	for _, l := range links {
		if l.Params["rt"] == "oma.lwm2m" {
			root = strings.TrimSuffix(l.URI, "/")
			if root != "" && !strings.HasPrefix(root, "/") {
				return "", nil, fmt.Errorf("alternate path %q is not absolute", l.URI)
			}
		}
	}
	for _, l := range links {
		if l.Params["rt"] == "oma.lwm2m" || !strings.HasPrefix(l.URI, root+"/") {
			continue
		}
		p, err := parsePath(strings.TrimPrefix(l.URI, root))
		if err != nil || len(p) > 2 {
			continue
		}
		objs = append(objs, p.String())
	}
	return root, objs, nil
}
