package identity

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Verifier checks a proof of identity. Certify and Authenticator call it from gRPC handler
// goroutines, concurrently, once per request, before they look at anything else the caller
// sent; it may block (a Kubernetes TokenReview is a network call) and must honour ctx.
type Verifier interface {
	// Verify returns the identity token proves, or an error wrapping ErrUnproven when it proves
	// none. Errors never contain the token.
	Verify(ctx context.Context, token string) (spiffeid.ID, error)
}

// ErrUnproven is wrapped by Verifier errors for a token that proves no identity.
var ErrUnproven = errors.New("the token proves no identity")

// MinTokenLength is the shortest bootstrap token accepted: 16 bytes of a random alphabet are
// beyond guessing (`openssl rand -hex 16` prints 32).
const MinTokenLength = 16

// maxTokenLength bounds a token: Kubernetes ServiceAccount tokens are a few KiB.
const maxTokenLength = 16 << 10

// Tokens is the bootstrap Verifier: a fixed set of tokens, each proving one identity, read from
// a file at start. Only SHA-256 hashes of the tokens are kept in memory.
//
// The file has one token per line, then white space, then the SPIFFE ID it proves:
//
//	# token                            identity
//	3f1c9a0e5b7d42c8a16e0f9b2d4c7a51   spiffe://cluster.local/ns/stocks/sa/stockdata
//	9b2e41d07c3f5a8e6d1b0c4f7a2e9d36   spiffe://cluster.local/ns/web/sa/stockweb
//
// Blank lines and lines starting with # are ignored. A token is at least MinTokenLength bytes
// of printable ASCII without spaces; the same token on two lines is an error; an identity may have
// several tokens (one per proxy, so one can be revoked alone). Every identity must be in the
// trust domain given to LoadTokens. Errors name the line, never the token.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	sum [sha256.Size]byte
	id  spiffeid.ID
}

// LoadTokens reads a bootstrap token file for trust domain td.
func LoadTokens(path string, td spiffeid.TrustDomain) (*Tokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading token file: %w", err)
	}
	t, err := ParseTokens(data, td)
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens parses the contents of a bootstrap token file (see Tokens).
func ParseTokens(data []byte, td spiffeid.TrustDomain) (*Tokens, error) {
	t := &Tokens{}
	seen := make(map[[sha256.Size]byte]int)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxTokenLength+4096)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"TOKEN SPIFFE-ID\", got %d fields", line, len(fields))
		}
		tok, idText := fields[0], fields[1]
		if len(tok) < MinTokenLength {
			return nil, fmt.Errorf("line %d: the token is %d bytes, shorter than %d (make one with `openssl rand -hex 16`)", line, len(tok), MinTokenLength)
		}
		if len(tok) > maxTokenLength {
			return nil, fmt.Errorf("line %d: the token is longer than %d bytes", line, maxTokenLength)
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] < 0x21 || tok[i] > 0x7e {
				return nil, fmt.Errorf("line %d: the token holds a byte that is not printable ASCII", line)
			}
		}
		id, err := spiffeid.FromString(idText)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q is not a SPIFFE ID: %v", line, idText, err)
		}
		if !id.MemberOf(td) || id.Path() == "" {
			return nil, fmt.Errorf("line %d: %s is not a workload identity in trust domain %s", line, id, td)
		}
		sum := sha256.Sum256([]byte(tok))
		if prev, dup := seen[sum]; dup {
			return nil, fmt.Errorf("line %d: the same token is already on line %d; give every proxy its own", line, prev)
		}
		seen[sum] = line
		t.entries = append(t.entries, tokenEntry{sum: sum, id: id})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return t, nil
}

// Len is the number of tokens.
func (t *Tokens) Len() int { return len(t.entries) }

// Verify implements Verifier. It compares the token's hash with every entry in constant time and
// without stopping at a match, so neither the time taken nor an early exit tells an attacker how
// close a guess was or where in the file a token sits.
func (t *Tokens) Verify(_ context.Context, token string) (spiffeid.ID, error) {
	sum := sha256.Sum256([]byte(token))
	match := -1
	for i := range t.entries {
		eq := subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 || len(token) < MinTokenLength {
		return spiffeid.ID{}, ErrUnproven
	}
	return t.entries[match].id, nil
}
