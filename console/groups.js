// Networks and device types: the same page twice (list with a name filter and paging, create, edit,
// delete — and, when the group still has devices, the hub's refusal followed by the force option).

import { ApiError, del, describe, get, isAdmin, post, put } from './api.js';
import { clear, confirmDialog, errorBox, field, h, modal, pager, table, toast } from './dom.js';

const PAGE = 20;

function groupPage(kind) {
  return {
    render(main) {
      const state = { skip: 0, take: PAGE, total: 0, filter: '' };
      const error = errorBox();
      const list = h('div', { class: 'list' });
      const filter = h('input', { type: 'search', placeholder: 'Name contains…', 'aria-label': `Filter ${kind.plural} by name` });
      let debounce;
      filter.addEventListener('input', () => {
        clearTimeout(debounce);
        debounce = setTimeout(() => {
          state.filter = filter.value.trim();
          state.skip = 0;
          load();
        }, 250);
      });
      const create = h('button', { type: 'button', onclick: () => edit(null) }, `New ${kind.singular}`);
      main.append(
        h('h1', {}, kind.title),
        h('div', { class: 'toolbar' }, filter, isAdmin() ? create : null),
        error,
        list);

      async function load() {
        const query = state.filter ? { namePattern: `%${state.filter}%` } : {};
        try {
          const [rows, count] = await Promise.all([
            get(kind.path, { ...query, sortField: 'name', sortOrder: 'ASC', take: state.take, skip: state.skip }),
            get(`${kind.path}/count`, query),
          ]);
          state.total = count.count;
          error.show('');
          clear(list).append(
            table([
              { label: 'Id', cell: (g) => String(g.id) },
              { label: 'Name', cell: (g) => h('strong', {}, g.name) },
              { label: 'Description', cell: (g) => g.description ?? '' },
              kind.deviceFilter ? { label: 'Devices', cell: (g) => h('a', { href: `#/devices?${kind.deviceFilter}=${g.id}` }, 'Show devices') } : null,
              {
                label: 'Actions',
                cell: (g) => h('div', { class: 'row-actions' },
                  h('button', { type: 'button', class: 'secondary', onclick: () => edit(g), 'aria-label': `Edit ${g.name}` }, 'Edit'),
                  h('button', { type: 'button', class: 'danger', onclick: () => remove(g), 'aria-label': `Delete ${g.name}` }, 'Delete')),
              },
            ].filter(Boolean), rows, { empty: state.filter ? `No ${kind.plural} match.` : `No ${kind.plural} yet.`, caption: kind.title }),
            pager(state, (skip) => {
              state.skip = skip;
              load();
            }));
        } catch (e) {
          error.show(describe(e));
        }
      }

      async function edit(group) {
        const saved = await modal(group ? `Edit ${kind.singular}` : `New ${kind.singular}`, (close) => {
          const name = h('input', { name: 'name', required: true, maxlength: 128, value: group?.name ?? '' });
          const description = h('input', { name: 'description', maxlength: 128, value: group?.description ?? '' });
          const formError = errorBox();
          return h('form', {
            onsubmit: async (event) => {
              event.preventDefault();
              const body = { name: name.value.trim(), description: description.value.trim() || null };
              try {
                if (group) await put(`${kind.path}/${group.id}`, body);
                else await post(kind.path, body);
                close(true);
              } catch (e) {
                formError.show(describe(e));
              }
            },
          },
          field('Name', name),
          field('Description', description),
          formError,
          h('div', { class: 'actions' },
            h('button', { type: 'submit' }, 'Save'),
            h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel')));
        });
        if (saved) {
          toast(`${kind.singularTitle} saved`);
          load();
        }
      }

      async function remove(group) {
        if (!(await confirmDialog(`Delete ${kind.singular}`, `Delete ${kind.singular} “${group.name}”?`, 'Delete', true))) return;
        try {
          await del(`${kind.path}/${group.id}`);
        } catch (e) {
          // The hub refuses while devices remain and names them; deleting them too needs force=true.
          if (!(e instanceof ApiError) || e.status !== 400) {
            error.show(describe(e));
            return;
          }
          const force = await confirmDialog(`${kind.singularTitle} has devices`,
            `${e.message} Delete the ${kind.singular}, its devices and their messages anyway?`, 'Delete everything', true);
          if (!force) return;
          try {
            await del(`${kind.path}/${group.id}`, { force: true });
          } catch (e2) {
            error.show(describe(e2));
            return;
          }
        }
        toast(`${kind.singularTitle} deleted`);
        load();
      }

      load();
    },
  };
}

export const networks = groupPage({
  path: '/network', title: 'Networks', singular: 'network', singularTitle: 'Network', plural: 'networks', deviceFilter: 'networkId',
});
export const deviceTypes = groupPage({
  path: '/devicetype', title: 'Device types', singular: 'device type', singularTitle: 'Device type', plural: 'device types', deviceFilter: null,
});
