package docker

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestContainerName(t *testing.T) {
	name := containerName("web_api_v2", "c0ffee", "app-1", "hash")
	if want := "web_api_v2_c0ffee_" + shortHash("app-1/hash"); name != want {
		t.Fatalf("containerName = %q, want %q", name, want)
	}
	for _, tc := range []struct {
		name                string
		service, commit, h8 string
		ok                  bool
	}{
		{"/" + name, "web_api_v2", "c0ffee", shortHash("app-1/hash"), true},
		{"web_1.0-a_deadbeef", "web", "1.0-a", "deadbeef", true},
		{"noseparator", "", "", "", false},
		{"one_sep", "", "", "", false},
		{"_c_h", "", "", "", false},
		{"s__h", "", "", "", false},
	} {
		s, c, h, ok := parseContainerName(tc.name)
		if s != tc.service || c != tc.commit || h != tc.h8 || ok != tc.ok {
			t.Errorf("parseContainerName(%q) = %q, %q, %q, %v; want %q, %q, %q, %v", tc.name, s, c, h, ok, tc.service, tc.commit, tc.h8, tc.ok)
		}
	}
}

func TestCleanMessage(t *testing.T) {
	for in, want := range map[string]string{
		"Error response from daemon: No such container: x": "no such container: x",
		"Error: No such image: y":                          "no such image: y",
		"API returned a 500":                               "API returned a 500",
		"conflict: unable to remove":                       "conflict: unable to remove",
		"":                                                 "",
	} {
		if got := cleanMessage(in); got != want {
			t.Errorf("cleanMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRebaseTar checks both namings an engine may give the archive of
// "/v/.": entries under "./" (what Docker 20.10 sends) or under "v/"; both
// come out under "v/", to be extracted at "/".
func TestRebaseTar(t *testing.T) {
	for _, root := range []string{"./", "v/"} {
		var in bytes.Buffer
		tw := tar.NewWriter(&in)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: root, Mode: 0o700, Uid: 7})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: root + "a", Mode: 0o600, Size: 2})
		tw.Write([]byte("hi"))
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: root + "d/", Mode: 0o755})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: root + "d/b", Linkname: root + "a"})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: root + "d/s", Linkname: "../a"})
		tw.Close()

		var out bytes.Buffer
		st, err := rebaseTar(&in, &out)
		if err != nil {
			t.Fatal(err)
		}
		if st != (tarStats{entries: 5, bytes: 2}) {
			t.Errorf("root %q: counted %+v, want 5 entries, 2 bytes", root, st)
		}
		var got []string
		tr := tar.NewReader(&out)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			got = append(got, h.Name+" -> "+h.Linkname+" "+string(b))
		}
		want := []string{"v/ ->  ", "v/a ->  hi", "v/d/ ->  ", "v/d/b -> v/a ", "v/d/s -> ../a "}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("root %q (-want +got):\n%s", root, diff)
		}
	}
}
