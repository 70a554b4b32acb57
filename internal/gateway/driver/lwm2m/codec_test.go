package lwm2m

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTLVRoundTrip(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 300)
	huge := bytes.Repeat([]byte("y"), 70_000)
	in := []TLV{
		{Type: TLVObjectInstance, ID: 0, Children: []TLV{
			{Type: TLVResource, ID: 0, Value: []byte("Reeve")},
			{Type: TLVResource, ID: 3, Value: []byte("c1")},
			{Type: TLVResource, ID: 17, Value: long},
			{Type: TLVMultipleResource, ID: 6, Children: []TLV{
				{Type: TLVResourceInstance, ID: 0, Value: TLVIntBytes(1)},
				{Type: TLVResourceInstance, ID: 1, Value: TLVIntBytes(5)},
			}},
		}},
		{Type: TLVResource, ID: 300, Value: huge},
		{Type: TLVResource, ID: 1, Value: []byte{}},
	}
	b, err := EncodeTLV(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeTLV(b)
	if err != nil {
		t.Fatal(err)
	}
	// An empty value decodes as an empty slice of the input.
	if diff := cmp.Diff(in, out, cmp.Comparer(func(a, b []byte) bool { return bytes.Equal(a, b) })); diff != "" {
		t.Fatalf("round trip (-in +out):\n%s", diff)
	}
}

// After the Device (/3/0) example of OMA LwM2M 1.0 §6.4.3: strings, a
// multiple resource, a 1-byte and a 4-byte integer.
func TestTLVSpecExample(t *testing.T) {
	var b []byte
	b = append(b, 0xC8, 0x00, 0x14)
	b = append(b, "Open Mobile Alliance"...)
	b = append(b, 0xC8, 0x01, 0x16)
	b = append(b, "Lightweight M2M Client"...)
	b = append(b, 0xC8, 0x02, 0x09)
	b = append(b, "345000123"...)
	b = append(b, 0xC3, 0x03)
	b = append(b, "1.0"...)
	b = append(b, 0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05)
	b = append(b, 0xC1, 0x09, 0x64)
	b = append(b, 0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F)
	vals, err := decodeResources(cfTLV, b, path{3, 0})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[uint16]string{0: "Open Mobile Alliance", 1: "Lightweight M2M Client", 2: "345000123", 3: "1.0"} {
		if got := vals[id].String(); got != want {
			t.Errorf("resource %d: %q, want %q", id, got, want)
		}
	}
	for id, want := range map[uint16]int64{9: 100, 13: 0x5182428F} {
		if got, err := vals[id].Int(); err != nil || got != want {
			t.Errorf("resource %d: %d %v, want %d", id, got, err, want)
		}
	}
	if _, ok := vals[6]; ok {
		t.Errorf("multiple resource 6 read as a single value")
	}
	// The same wrapped in an object instance.
	wrapped, err := EncodeTLV([]TLV{{Type: TLVObjectInstance, ID: 0, Children: mustTLV(t, b)}})
	if err != nil {
		t.Fatal(err)
	}
	vals, err = decodeResources(cfTLV, wrapped, path{3, 0})
	if err != nil || vals[3].String() != "1.0" {
		t.Fatalf("wrapped: %v %v", vals, err)
	}
	if _, err := decodeResources(cfTLV, wrapped, path{3, 1}); err == nil {
		t.Errorf("instance 0 read as instance 1")
	}
}

func mustTLV(t *testing.T, b []byte) []TLV {
	t.Helper()
	ts, err := DecodeTLV(b)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestTLVBadInput(t *testing.T) {
	for name, b := range map[string][]byte{
		"truncated id":            {0xC0},
		"truncated 16-bit id":     {0xE0, 0x01},
		"truncated length":        {0xC8, 0x00},
		"length past the end":     {0xC8, 0x00, 0x05, 'a', 'b'},
		"short length past end":   {0xC3, 0x00, 'a'},
		"24-bit length past end":  {0xD8, 0x00, 0xff, 0xff, 0xff, 'a'},
		"instance in instance":    {0x03, 0x00, 0x01, 0x00},
		"instance in multiple":    {0x82, 0x00, 0x00, 0x00},
		"resource in multiple":    {0x82, 0x00, 0xC0, 0x00},
		"bad child of instance":   {0x04, 0x00, 0x42, 0x00, 0x01},
		"garbage inside instance": {0x08, 0x00, 0x02, 0xff, 0xff},
	} {
		if ts, err := DecodeTLV(b); err == nil {
			t.Errorf("%s: decoded %+v", name, ts)
		}
	}
	if _, err := TLVInt([]byte{1, 2, 3}); err == nil {
		t.Errorf("3-byte integer read")
	}
	if _, err := EncodeTLV([]TLV{{Type: 4}}); err == nil {
		t.Errorf("type 4 encoded")
	}
	if _, err := EncodeTLV([]TLV{{Type: TLVResource, Value: make([]byte, 1<<24)}}); err == nil {
		t.Errorf("a value past 24 bits of length encoded")
	}
}

func TestTLVInts(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 127, -128, 128, -129, 32767, -32768, 32768, 1 << 31, -(1 << 31) - 1, 1<<63 - 1, -1 << 63} {
		b := TLVIntBytes(v)
		got, err := TLVInt(b)
		if err != nil || got != v {
			t.Errorf("%d: %d bytes read back as %d, %v", v, len(b), got, err)
		}
	}
	if n := len(TLVIntBytes(128)); n != 2 {
		t.Errorf("128 in %d bytes, want 2", n)
	}
}

func TestDecodeResource(t *testing.T) {
	tlv, _ := EncodeTLV([]TLV{{Type: TLVResource, ID: 3, Value: TLVIntBytes(2)}})
	cases := []struct {
		name  string
		cf    int
		hasCF bool
		body  string
		str   string
		num   int64
	}{
		{"no format", 0, false, "2", "2", 2},
		{"text", cfText, true, " 2\n", " 2\n", 2},
		{"legacy text", cfLegacyText, true, "2", "2", 2},
		{"tlv", cfTLV, true, string(tlv), "\x02", 2},
		{"senml", cfSenMLJSON, true, `[{"bn":"/5/0/","n":"3","v":2}]`, "2", 2},
		{"senml float", cfSenMLJSON, true, `[{"bn":"/5/0/","n":"3","v":2.0}]`, "2", 2},
		{"oma json", cfOMAJSON, true, `{"bn":"/5/0/","e":[{"n":"3","v":2}]}`, "2", 2},
	}
	for _, c := range cases {
		v, err := decodeResource(c.cf, c.hasCF, []byte(c.body), path{5, 0, 3})
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if v.String() != c.str {
			t.Errorf("%s: string %q, want %q", c.name, v.String(), c.str)
		}
		if n, err := v.Int(); err != nil || n != c.num {
			t.Errorf("%s: int %d %v, want %d", c.name, n, err, c.num)
		}
	}
	for name, c := range map[string]struct {
		cf   int
		body string
	}{
		"other resource": {cfTLV, string(tlv[:0]) + "\xc1\x04\x02"},
		"bad senml":      {cfSenMLJSON, `{"bn":`},
		"bad json":       {cfOMAJSON, `[1]`},
		"cbor":           {112, "\x81"},
	} {
		if v, err := decodeResource(c.cf, true, []byte(c.body), path{5, 0, 3}); err == nil {
			t.Errorf("%s: decoded %+v", name, v)
		}
	}
	if _, err := (value{text: "two"}).Int(); err == nil {
		t.Errorf("\"two\" read as an integer")
	}
}

func TestSenMLDevice(t *testing.T) {
	body := `[{"bn":"/3/0/","n":"0","vs":"Reeve"},{"n":"3","vs":"c7"},{"n":"9","v":88},{"n":"17","vs":"esp32"},` +
		`{"n":"6/0","v":1},{"bn":"/4/0/","n":"0","v":1}]`
	vals, err := decodeResources(cfSenMLJSON, []byte(body), path{3, 0})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]string{}
	for id, v := range vals {
		got[id] = v.String()
	}
	if diff := cmp.Diff(map[uint16]string{0: "Reeve", 3: "c7", 9: "88", 17: "esp32"}, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestParseLinks(t *testing.T) {
	links, err := ParseLinks(`</>;rt="oma.lwm2m";ct=11543, </1/0>,</3/0>;ver=1.1,</5>,` + "\n" + `</3303/0>;title="a, \"b\"";obs`)
	if err != nil {
		t.Fatal(err)
	}
	want := []Link{
		{URI: "/", Params: map[string]string{"rt": "oma.lwm2m", "ct": "11543"}},
		{URI: "/1/0", Params: map[string]string{}},
		{URI: "/3/0", Params: map[string]string{"ver": "1.1"}},
		{URI: "/5", Params: map[string]string{}},
		{URI: "/3303/0", Params: map[string]string{"title": `a, "b"`, "obs": ""}},
	}
	if diff := cmp.Diff(want, links); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if links, err := ParseLinks("  "); err != nil || links != nil {
		t.Errorf("blank: %v %v", links, err)
	}
	for _, bad := range []string{
		"/3/0", "<", "</3/0", "</3/0>,", "</3/0>;", "</3/0>;=1", "</3/0>;t=\"x", "</3/0> </5/0>",
		"</3/0>,garbage", "<</3/0>>", "</3/0>;a=1,,</5/0>", "\x00\x01\xff",
	} {
		if links, err := ParseLinks(bad); err == nil {
			t.Errorf("%q parsed as %+v", bad, links)
		}
	}
}

func TestRegisteredObjects(t *testing.T) {
	root, objs, err := registeredObjects(`</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>,</lwm2m/5/0>,</lwm2m/3303>,</other/1>,</lwm2m/x>`)
	if err != nil || root != "/lwm2m" || !cmp.Equal(objs, []string{"/3/0", "/5/0", "/3303"}) {
		t.Fatalf("root %q objects %v err %v", root, objs, err)
	}
	root, objs, err = registeredObjects(`</3/0>,</5/0>`) // lwm2m-node-lib's
	if err != nil || root != "" || !cmp.Equal(objs, []string{"/3/0", "/5/0"}) {
		t.Fatalf("root %q objects %v err %v", root, objs, err)
	}
	if _, _, err := registeredObjects(`<lwm2m>;rt="oma.lwm2m"`); err == nil {
		t.Errorf("relative root accepted")
	}
}

func TestParsePath(t *testing.T) {
	for s, want := range map[string]string{"/3/0/3": "/3/0/3", "5/0": "/5/0", "/65535": "/65535", "/1/2/3/4": "/1/2/3/4"} {
		p, err := parsePath(s)
		if err != nil || p.String() != want {
			t.Errorf("%q: %v %v", s, p, err)
		}
	}
	for _, bad := range []string{"", "/", "/a", "/3//0", "/65536", "/1/2/3/4/5", "/03", "/-1", "/3/0/"} {
		if p, err := parsePath(bad); err == nil {
			t.Errorf("%q parsed as %v", bad, p)
		}
	}
	if !strings.HasPrefix(path{3, 0, 4}.String(), "/3/0/4") {
		t.Errorf("path string")
	}
}
