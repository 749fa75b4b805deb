// Batch invites from CSV: one person per line, `name,categories` (categories separated by `;` or spaces inside
// the field, which may be quoted); an optional header line; blank lines ignored. Lines that cannot be used are
// reported with their number instead of being dropped.

export interface CsvInvite {
  line: number;
  name: string;
  categories: string[];
}

export interface CsvProblem {
  line: number;
  text: string;
}

/** Splits one CSV line into fields (RFC 4180 quotes, `""` inside a quoted field). */
export function fields(line: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        current += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else current += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      out.push(current);
      current = '';
    } else current += ch;
  }
  out.push(current);
  return out.map((f) => f.trim());
}

export function parseInvites(text: string, known: string[]): { rows: CsvInvite[]; problems: CsvProblem[] } {
  const rows: CsvInvite[] = [];
  const problems: CsvProblem[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = index + 1;
    if (raw.trim() === '') return;
    const [name = '', cats = ''] = fields(raw);
    if (index === 0 && name.toLowerCase() === 'name') return;
    if (!name) {
      problems.push({ line, text: 'name' });
      return;
    }
    const categories = cats.split(/[;\s]+/).filter(Boolean);
    const unknown = categories.filter((c) => !known.includes(c));
    if (unknown.length) {
      problems.push({ line, text: unknown.join(', ') });
      return;
    }
    rows.push({ line, name, categories });
  });
  return { rows, problems };
}
