// Members: search, categories, enrollment, last seen and online; "view as member" (key fingerprint and exactly
// the directory slice the member gets); revoke (their sessions end within seconds); re-invite (never a key reset).
import { useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { Who } from '../App';
import { type CreatedInvite, type Member, type MemberView, api, describe, must, ok } from '../api/client';
import { Done, ErrorNote, Qr, ago, useConfirm, useLoad, when } from '../ui';

export function MembersTab({ who, bubble }: { who: Who; bubble: string }) {
  const { t, i18n } = useTranslation();
  const [query, setQuery] = useState('');
  const [viewing, setViewing] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [fresh, setFresh] = useState<CreatedInvite | null>(null);
  const [confirm, dialog] = useConfirm();
  const members = useLoad(
    async () => must(await api.GET('/api/v1/bubbles/{bubble}/members', { params: { path: { bubble } } })),
    [bubble],
    3_000,
  );
  const q = query.trim().toLowerCase();
  const shown = (members.data ?? []).filter(
    (m) => !q || m.display_name.toLowerCase().includes(q) || m.member.includes(q) || m.categories.some((c) => c.includes(q)),
  );

  const revoke = async (m: Member) => {
    if (!(await confirm(t('members.revokeConfirm', { name: m.display_name }), t('members.revoke')))) return;
    setError(null);
    try {
      ok(await api.POST('/api/v1/bubbles/{bubble}/members/{member}/revoke', { params: { path: { bubble, member: m.member } } }));
      setDone(t('members.revoked', { name: m.display_name }));
      members.reload();
    } catch (err) {
      setError(describe(err));
    }
  };
  const reinvite = async (m: Member) => {
    const text = m.status === 'active' ? t('members.reinviteConfirmActive', { name: m.display_name }) : t('members.reinviteConfirm', { name: m.display_name });
    if (!(await confirm(text, t('members.reinvite')))) return;
    setError(null);
    try {
      const invite = must(
        await api.POST('/api/v1/bubbles/{bubble}/members/{member}/reinvite', { params: { path: { bubble, member: m.member } }, body: {} }),
      );
      setFresh(invite);
      setDone(t('members.reinvited', { name: m.display_name }));
      members.reload();
    } catch (err) {
      setError(describe(err));
    }
  };

  return (
    <section aria-labelledby="members-title">
      <h2 id="members-title" className="sr-only">
        {t('bubble.tab.members')}
      </h2>
      {dialog}
      <div className="row">
        <label className="search">
          <span className="sr-only">{t('members.search')}</span>
          <input type="search" placeholder={t('members.search')} value={query} onChange={(e) => setQuery(e.target.value)} />
        </label>
        <span className="muted small">
          {t('members.count', { count: members.data?.filter((m) => m.status === 'active').length ?? 0 })} ·{' '}
          {t('members.onlineCount', { count: members.data?.filter((m) => m.online).length ?? 0 })}
        </span>
      </div>
      <ErrorNote error={members.error} onRetry={members.reload} />
      <ErrorNote error={error} />
      <Done text={done} />
      {fresh && (
        <div className="card invite-fresh">
          <Qr svg={fresh.qr_svg} label={t('invites.qrLabel')} />
          <div>
            <p>{t('invites.handOver')}</p>
            <p className="mono break">{fresh.link}</p>
            <p className="small muted">{t('invites.expires', { when: when(fresh.expires_at, i18n.language) })}</p>
          </div>
        </div>
      )}
      {members.data && members.data.length === 0 && <p className="empty">{who.canChange ? t('members.emptyAdmin') : t('members.empty')}</p>}
      {shown.length > 0 && (
        <div className="table-wrap">
          <table className="stack">
            <thead>
              <tr>
                <th>{t('members.name')}</th>
                <th>{t('members.categories')}</th>
                <th>{t('members.status')}</th>
                <th>{t('members.enrolled')}</th>
                <th>{t('members.lastSeen')}</th>
                <th>
                  <span className="sr-only">{t('members.actions')}</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {shown.map((m) => (
                <tr key={m.member} className={m.status === 'revoked' ? 'revoked' : ''} data-member={m.display_name}>
                  <td data-label={t('members.name')}>
                    <div>
                      <strong>{m.display_name}</strong>
                      <div className="mono small muted">{m.member.slice(0, 16)}…</div>
                    </div>
                  </td>
                  <td data-label={t('members.categories')}>{m.categories.join(', ') || '—'}</td>
                  <td data-label={t('members.status')}>
                    {m.status === 'revoked' ? (
                      <span className="pill errors">{t('members.state.revoked')}</span>
                    ) : m.online ? (
                      <span className="pill ok">{t('members.state.online')}</span>
                    ) : (
                      <span className="pill none">{t('members.state.offline')}</span>
                    )}
                  </td>
                  <td data-label={t('members.enrolled')}>{when(m.enrolled_at, i18n.language)}</td>
                  <td data-label={t('members.lastSeen')}>{ago(m.last_seen, i18n.language)}</td>
                  <td>
                    <div className="actions">
                    <button type="button" onClick={() => setViewing(viewing === m.member ? null : m.member)} aria-expanded={viewing === m.member}>
                      {t('members.viewAs')}
                    </button>
                    {who.canChange && m.status === 'active' && (
                      <button type="button" className="danger" onClick={() => void revoke(m)}>
                        {t('members.revoke')}
                      </button>
                    )}
                    {who.canChange && (
                      <button type="button" onClick={() => void reinvite(m)}>
                        {t('members.reinvite')}
                      </button>
                    )}
                    </div>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {members.data && members.data.length > 0 && shown.length === 0 && <p className="empty">{t('members.noMatch')}</p>}
      {viewing && <ViewAs bubble={bubble} member={viewing} onClose={() => setViewing(null)} />}
    </section>
  );
}

function ViewAs({ bubble, member, onClose }: { bubble: string; member: string; onClose: () => void }) {
  const { t } = useTranslation();
  const view = useLoad<MemberView>(
    async () => must(await api.GET('/api/v1/bubbles/{bubble}/members/{member}/view', { params: { path: { bubble, member } } })),
    [bubble, member],
  );
  return (
    <section className="card view-as" aria-labelledby="view-as-title">
      <div className="row">
        <h3 id="view-as-title">{view.data ? t('members.viewAsTitle', { name: view.data.display_name }) : t('loading')}</h3>
        <button type="button" className="link" onClick={onClose}>
          {t('action.close')}
        </button>
      </div>
      <ErrorNote error={view.error} onRetry={view.reload} />
      {view.data && (
        <>
          <p className="small muted">{t('members.fingerprintHint')}</p>
          <p className="mono fingerprint" data-testid="fingerprint">
            {view.data.fingerprint}
          </p>
          <h4>{t('members.sees', { count: view.data.sees.length })}</h4>
          {view.data.sees.length === 0 ? (
            <p className="empty">{view.data.status === 'revoked' ? t('members.seesRevoked') : t('members.seesNobody')}</p>
          ) : (
            <ul className="slice" data-testid="slice">
              {view.data.sees.map((e) => (
                <li key={e.member}>
                  <strong>{e.display_name}</strong> <span className="muted">{e.categories.join(', ')}</span>
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </section>
  );
}
