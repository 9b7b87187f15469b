// Drives the operator page in a real headless browser, as an operator would: signs in
// (first with a wrong token), finds a delivery with its explanation, pauses a lane
// with a reason, and in a second run sees what waits behind the pause, takes the
// screenshot the README shows, and resumes the lane. tests/console.rs runs it, one
// phase at a time, and checks through the API what the clicks did.
//
//   node page.mjs <phase: pause|resume> <json arguments>
//
// Arguments: url, token, browser (executable path), lane ("pipeline/environment"),
// reason; for pause: delivery, explanation (a line the page must show), execution;
// for resume: waiting (how many jobs the lane must show waiting), screenshot (path).
// It prints one JSON line of what it saw and exits non-zero on the first surprise.

import { chromium } from 'playwright-core';

const [phase, raw] = process.argv.slice(2);
const args = JSON.parse(raw);
const seen = { phase };

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: args.browser,
  // Run as root in a container: Chromium's sandbox needs user namespaces.
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', async (dialog) => {
    dialogs.push(dialog.message());
    await dialog.dismiss();
  });

  // Not signed in: the page sends the browser to the form.
  await page.goto(`${args.url}/ui`);
  check(new URL(page.url()).pathname === '/ui/login', `unsigned /ui went to ${page.url()}`);

  if (phase === 'pause') {
    // A wrong token is refused and opens no session.
    await page.fill('#token', 'not-a-token-of-this-daemon');
    await Promise.all([page.waitForLoadState(), page.click('#sign-in')]);
    const refused = await page.textContent('body');
    check(refused.includes('not one of api.tokens'), `wrong token answered: ${refused}`);
    const sessions = (await context.cookies()).filter((c) => c.name === 'gitdispatch_session');
    check(sessions.length === 0, 'a wrong token set a session cookie');
    await page.goto(`${args.url}/ui/login`);
  }

  await page.fill('#token', args.token);
  await Promise.all([page.waitForURL(`${args.url}/ui`), page.click('#sign-in')]);
  const cookie = (await context.cookies()).find((c) => c.name === 'gitdispatch_session');
  check(cookie !== undefined, 'no session cookie after signing in');
  seen.cookie = { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite };
  // Scripts on the page cannot read it.
  seen.scriptSeesCookie = (await page.evaluate(() => document.cookie)).includes('gitdispatch');

  const lane = page.locator(`tr[data-lane="${args.lane}"]`);
  const state = lane.locator('.lane-state');

  if (phase === 'pause') {
    const delivery = page.locator(`tr.delivery[data-id="${args.delivery}"]`);
    await delivery.waitFor();
    const shown = await delivery.innerText();
    check(shown.includes(args.explanation), `the delivery's row lacks "${args.explanation}": ${shown}`);
    check(shown.includes(args.execution), `the delivery's row lacks ${args.execution}: ${shown}`);
    seen.delivery = shown;

    // The execution's link answers for the session, with what the executor says.
    await Promise.all([
      page.waitForURL(`${args.url}/v1/executions/${args.execution}`),
      page.click(`a[href="/v1/executions/${args.execution}"]`),
    ]);
    const execution = JSON.parse(await page.innerText('body'));
    check(execution.name === args.execution, `the link showed ${JSON.stringify(execution)}`);
    seen.execution = execution.status;
    await page.goBack();

    check((await state.innerText()).startsWith('running'), `lane not running: ${await state.innerText()}`);
    await lane.locator('input[type=text]').fill(args.reason);
    await lane.locator('button[data-action=pause]').click();
    await page.waitForFunction(
      ([selector, reason]) => {
        const cell = document.querySelector(selector);
        return cell && cell.innerText.startsWith('paused') && cell.innerText.includes(reason);
      },
      [`tr[data-lane="${args.lane}"] .lane-state`, args.reason],
    );
    seen.state = await state.innerText();
  } else if (phase === 'resume') {
    seen.state = await state.innerText();
    check(seen.state.startsWith('paused') && seen.state.includes(args.reason), `lane not paused: ${seen.state}`);
    seen.waiting = await lane.locator('td').nth(4).innerText();
    check(seen.waiting.startsWith(`${args.waiting} (`), `waiting shows "${seen.waiting}", not ${args.waiting}`);
    await page.screenshot({ path: args.screenshot, fullPage: true });
    await lane.locator('button[data-action=resume]').click();
    await page.waitForFunction(
      (selector) => document.querySelector(selector)?.innerText.startsWith('running'),
      `tr[data-lane="${args.lane}"] .lane-state`,
    );
    seen.resumed = await state.innerText();
  } else {
    throw new Error(`unknown phase ${phase}`);
  }
  check(dialogs.length === 0, `the page complained: ${dialogs.join('; ')}`);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
