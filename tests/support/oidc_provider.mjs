// A real OpenID Connect provider for the tests: the OpenID-certified `oidc-provider` package with one registered
// client and the people of ACCOUNTS_FILE (read again at every sign-in, so a test can change someone's groups).
// Started by tests/support/oidc_provider.py; everything it needs comes from the environment.
import fs from 'node:fs';
import Provider from 'oidc-provider';

const env = process.env;
const list = (value) => (value || '').split(',').filter(Boolean);

function person(id) {
  const people = JSON.parse(fs.readFileSync(env.ACCOUNTS_FILE, 'utf8'));
  return Object.prototype.hasOwnProperty.call(people, id) ? people[id] : undefined;
}

const provider = new Provider(env.ISSUER, {
  clients: [
    {
      client_id: env.CLIENT_ID,
      client_secret: env.CLIENT_SECRET,
      redirect_uris: list(env.REDIRECT_URIS),
      post_logout_redirect_uris: list(env.POST_LOGOUT_REDIRECT_URIS),
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  // The portal must send PKCE: the provider refuses an authorization request without it.
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  // Put the scopes' claims in the ID token, as Okta, Entra ID and Keycloak can be set to; or (CLAIMS_IN_ID_TOKEN=0)
  // only in the userinfo answer, OpenID Connect's default.
  conformIdTokenClaims: env.CLAIMS_IN_ID_TOKEN === '0',
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  cookies: { keys: ['tests-only-cookie-key'] },
  async findAccount(ctx, id) {
    const claims = person(id);
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...person(id) }; } };
  },
  // A first-party client: grant what it asks without a consent page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

provider.listen(Number(env.PORT), '127.0.0.1', () => console.log(`oidc-provider listening on ${env.ISSUER}`));
