// Invites: one at a time or a batch from CSV (with progress), each with its link and QR code, a printable sheet
// of the fresh ones; the list of a bubble's invites with their state, and withdrawal of an unused one.
import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type Category, type CreatedInvite, type Invite, api, describe, must, ok } from '../api/client';
import { parseInvites } from '../csv';
import { Done, ErrorNote, Qr, useConfirm, useLoad, when } from '../ui';

interface Fresh extends CreatedInvite {
  name: string;
}

const EXPIRY_DAYS = [1, 3, 7, 14, 30];

export function InvitesTab({ who, bubble }: { who: Who; bubble: string }) {
  const { t, i18n } = useTranslation();
  const [fresh, setFresh] = useState<Fresh[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [confirm, dialog] = useConfirm();
  const invites = useLoad(async () => must(await api.GET('/api/v1/bubbles/{bubble}/invites', { params: { path: { bubble } } })), [bubble]);
  const categories = useLoad(async () => must(await api.GET('/api/v1/bubbles/{bubble}/categories', { params: { path: { bubble } } })), [bubble]);

  const revoke = async (inv: Invite) => {
    if (!(await confirm(t('invites.revokeConfirm', { name: inv.display_name }), t('invites.revoke')))) return;
    setError(null);
    try {
      ok(await api.DELETE('/api/v1/bubbles/{bubble}/invites/{invite}', { params: { path: { bubble, invite: inv.id } } }));
      setDone(t('invites.revoked', { name: inv.display_name }));
      setFresh((list) => list.filter((f) => f.id !== inv.id));
      invites.reload();
    } catch (err) {
      setError(describe(err));
    }
  };

  const made = (list: Fresh[]) => {
    setFresh((old) => [...list, ...old]);
    invites.reload();
  };

  return (
    <section aria-labelledby="invites-title">
      <h2 id="invites-title" className="sr-only">
        {t('bubble.tab.invites')}
      </h2>
      {dialog}
      {who.canChange && categories.data && (
        <div className="grid2 no-print">
          <SingleInvite bubble={bubble} categories={categories.data} onMade={made} />
          <BatchInvite bubble={bubble} categories={categories.data.map((c) => c.id)} onMade={made} />
        </div>
      )}
      {fresh.length > 0 && (
        <section className="sheet" aria-labelledby="sheet-title">
          <div className="row no-print">
            <h3 id="sheet-title">{t('invites.fresh', { count: fresh.length })}</h3>
            <button type="button" className="primary" onClick={() => window.print()}>
              {t('invites.print')}
            </button>
          </div>
          <p className="small muted no-print">{t('invites.freshHint')}</p>
          <ul className="qr-sheet">
            {fresh.map((f) => (
              <li key={f.id} className="qr-card" data-invite={f.name}>
                <Qr svg={f.qr_svg} label={t('invites.qrFor', { name: f.name })} />
                <div>
                  <strong>{f.name}</strong>
                  <p className="small">{t('invites.printInstructions')}</p>
                  <p className="mono small break link-text">{f.link}</p>
                  <p className="small muted">{t('invites.expires', { when: when(f.expires_at, i18n.language) })}</p>
                </div>
              </li>
            ))}
          </ul>
        </section>
      )}
      <div className="no-print">
        <h3>{t('invites.all')}</h3>
        <ErrorNote error={invites.error} onRetry={invites.reload} />
        <ErrorNote error={error} />
        <Done text={done} />
        {invites.data && invites.data.length === 0 && <p className="empty">{t('invites.empty')}</p>}
        {invites.data && invites.data.length > 0 && (
          <div className="table-wrap">
            <table className="stack">
              <thead>
                <tr>
                  <th>{t('invites.for')}</th>
                  <th>{t('members.categories')}</th>
                  <th>{t('invites.state')}</th>
                  <th>{t('invites.created')}</th>
                  <th>{t('invites.expiry')}</th>
                  <th>
                    <span className="sr-only">{t('members.actions')}</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {invites.data.map((inv) => (
                  <tr key={inv.id} data-invite-row={inv.display_name}>
                    <td data-label={t('invites.for')}>{inv.display_name}</td>
                    <td data-label={t('members.categories')}>{inv.categories.join(', ') || '—'}</td>
                    <td data-label={t('invites.state')}>
                      <span className={`pill ${inv.status === 'pending' ? 'ok' : inv.status === 'used' ? 'none' : 'errors'}`}>{t(`invites.status.${inv.status}`)}</span>
                    </td>
                    <td data-label={t('invites.created')}>{when(inv.created_at, i18n.language)}</td>
                    <td data-label={t('invites.expiry')}>{when(inv.expires_at, i18n.language)}</td>
                    <td>
                      {who.canChange && inv.status === 'pending' && (
                        <div className="actions">
                          <button type="button" className="danger" onClick={() => void revoke(inv)}>
                            {t('invites.revoke')}
                          </button>
                        </div>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
    </section>
  );
}

function Expiry({ id, days, setDays }: { id: string; days: number; setDays: (d: number) => void }) {
  const { t } = useTranslation();
  return (
    <>
      <label htmlFor={id}>{t('invites.validFor')}</label>
      <select id={id} value={days} onChange={(e) => setDays(Number(e.target.value))}>
        {EXPIRY_DAYS.map((d) => (
          <option key={d} value={d}>
            {t('invites.days', { count: d })}
          </option>
        ))}
      </select>
    </>
  );
}

function SingleInvite({ bubble, categories, onMade }: { bubble: string; categories: Category[]; onMade: (f: Fresh[]) => void }) {
  const { t } = useTranslation();
  const [name, setName] = useState('');
  const [chosen, setChosen] = useState<string[]>([]);
  const [days, setDays] = useState(7);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const invite = must(
        await api.POST('/api/v1/bubbles/{bubble}/invites', {
          params: { path: { bubble } },
          body: { display_name: name.trim(), categories: chosen, expires_in_secs: days * 86_400 },
        }),
      );
      onMade([{ ...invite, name: name.trim() }]);
      setName('');
    } catch (err) {
      setError(describe(err));
    }
  };
  return (
    <form className="card" onSubmit={(e) => void submit(e)} aria-labelledby="one-invite">
      <h3 id="one-invite">{t('invites.one')}</h3>
      <label htmlFor="invite-name">{t('invites.name')}</label>
      <input id="invite-name" value={name} maxLength={64} onChange={(e) => setName(e.target.value)} required />
      {categories.length > 0 ? (
        <fieldset>
          <legend>{t('members.categories')}</legend>
          {categories.map((c) => (
            <label key={c.id} className="check">
              <input type="checkbox" checked={chosen.includes(c.id)} onChange={(e) => setChosen(e.target.checked ? [...chosen, c.id] : chosen.filter((x) => x !== c.id))} />
              {c.display_name}
            </label>
          ))}
        </fieldset>
      ) : (
        <p className="hint">{t('invites.noCategories')}</p>
      )}
      <Expiry id="invite-days" days={days} setDays={setDays} />
      <ErrorNote error={error} />
      <button type="submit" className="primary" disabled={!name.trim()}>
        {t('invites.make')}
      </button>
    </form>
  );
}

function BatchInvite({ bubble, categories, onMade }: { bubble: string; categories: string[]; onMade: (f: Fresh[]) => void }) {
  const { t } = useTranslation();
  const [text, setText] = useState('');
  const [days, setDays] = useState(7);
  const [progress, setProgress] = useState<{ done: number; total: number } | null>(null);
  const [errors, setErrors] = useState<string[]>([]);
  const parsed = parseInvites(text, categories);
  const readFile = async (file: File | undefined) => {
    if (file) setText(await file.text());
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const made: Fresh[] = [];
    const failed: string[] = [];
    setErrors([]);
    setProgress({ done: 0, total: parsed.rows.length });
    for (const [i, row] of parsed.rows.entries()) {
      try {
        const invite = must(
          await api.POST('/api/v1/bubbles/{bubble}/invites', {
            params: { path: { bubble } },
            body: { display_name: row.name, categories: row.categories, expires_in_secs: days * 86_400 },
          }),
        );
        made.push({ ...invite, name: row.name });
      } catch (err) {
        failed.push(t('invites.lineFailed', { line: row.line, name: row.name, why: describe(err) }));
      }
      setProgress({ done: i + 1, total: parsed.rows.length });
    }
    onMade(made);
    setErrors(failed);
    if (failed.length === 0) setText('');
  };
  return (
    <form className="card" onSubmit={(e) => void submit(e)} aria-labelledby="batch-invite">
      <h3 id="batch-invite">{t('invites.batch')}</h3>
      <label htmlFor="batch-csv">{t('invites.csv')}</label>
      <textarea id="batch-csv" rows={5} value={text} onChange={(e) => setText(e.target.value)} placeholder={'name,categories\nAmira Haddad,field-team\nJonas Weber,command;field-team'} spellCheck={false} />
      <label htmlFor="batch-file" className="small">
        {t('invites.csvFile')}
      </label>
      <input id="batch-file" type="file" accept=".csv,text/csv,text/plain" onChange={(e) => void readFile(e.target.files?.[0])} />
      <p className="hint">{t('invites.csvHint')}</p>
      {parsed.problems.map((p) => (
        <p key={p.line} className="notice warn small">
          {p.text === 'name' ? t('invites.lineNoName', { line: p.line }) : t('invites.lineUnknown', { line: p.line, list: p.text })}
        </p>
      ))}
      <Expiry id="batch-days" days={days} setDays={setDays} />
      {progress && (
        <div className="progress">
          <progress max={progress.total} value={progress.done} aria-label={t('invites.progress')} />
          <span className="small">{t('invites.progressText', progress)}</span>
        </div>
      )}
      {errors.map((e) => (
        <p key={e} className="notice error small">
          {e}
        </p>
      ))}
      <button type="submit" className="primary" disabled={parsed.rows.length === 0 || parsed.problems.length > 0 || (progress !== null && progress.done < progress.total)}>
        {parsed.rows.length ? t('invites.makeBatch', { count: parsed.rows.length }) : t('invites.makeBatchEmpty')}
      </button>
    </form>
  );
}
