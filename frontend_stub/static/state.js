// Page state every screen module shares: the one `app` object and the query helper.

import { toQuery } from "./filters.js";

export const SUB = "wl"; // the one subscription: its id is also its request id
export const $ = (sel) => document.querySelector(sel);

export const app = {
  session: null, // {token, user} from /api/login
  user: null, // the server's view of who we are (authenticated.user)
  socket: null,
  list: null,
  presence: null,
  filters: null,
  sites: [],
  position: null, // {epoch, offset, key}: where the subscription's feed stands
  inflight: [], // view keys of subscribe requests not yet answered, oldest first
  subscribedKey: null, // the view key last asked for
  resyncing: false, // a server `resync`: the next snapshot replaces everything
  requests: new Map(), // request id -> {action, examId, then?}
  seq: 0,
  tokens: new Set(), // exam ids this connection holds claims on
  held: new Set(), // exam ids this page holds (survives reconnects and reloads)
  everLive: false,
  refreshTimer: null,
  liveTimer: null,
  reviews: null, // the peer-review desk (reviews.js)
  tab: "worklist", // worklist | mine | board
  wantTab: null, // a tab the address asked for that is not there yet (My reviews loading)
};

export const TAB_PATH = { worklist: "/worklist", mine: "/my-reviews", board: "/peer-review" };

/** The address of what is on screen: the tab, and the worklist's filters. */
export function address() {
  return `${TAB_PATH[app.wantTab || app.tab]}${toQuery(app.filters)}`;
}

// ---- connection indicator ------------------------------------------------------------

