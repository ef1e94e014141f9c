//! Draining a host through TaskControl: the shard cordons a draining host, offers a
//! `move` operation for each of its entitlement's tasks there, moves each task whose
//! operation the job's controller acked, and marks the host drained once it is empty.

use super::*;

impl Shard {
    /// A host's drain record, seen in a snapshot or the watch: the host is cordoned.
    pub(super) fn drain_seen(
        &mut self,
        host: &str,
        rev: Revision,
        state: DrainState,
    ) -> Result<(), SchedError> {
        let Some(&id) = self.ids.get(host) else {
            return Ok(());
        };
        if !self.drains.contains_key(host) && !self.foreign.contains(&id) {
            self.alloc.cordon(id)?;
        }
        self.drains.insert(host.to_owned(), (rev, state));
        Ok(())
    }

    /// One round of draining, after placement: offers a `move` operation for each of
    /// this entitlement's tasks on a draining host, moves the tasks whose operations
    /// the job's controller acked (each in one fenced transaction with its task record,
    /// assignments, host owners and the operation's keys), and marks a draining host
    /// `drained` once nothing of this entitlement is left on it.
    pub(crate) async fn drain<S: Store>(
        &mut self,
        store: &S,
        view: &View,
    ) -> Result<Outcome, SchedError> {
        let mut done = Placed::default();
        if self.drains.is_empty() && self.ops.is_empty() {
            return Ok(Outcome::Leading(done));
        }
        // 1. Offer.
        let mut offer = Vec::new();
        let any_draining = self
            .drains
            .values()
            .any(|(_, st)| *st == DrainState::Draining);
        for (job, js) in self.jobs.iter().filter(|_| any_draining) {
            for (&i, &t) in &js.placed {
                let host = self.host_name(self.alloc.task(t)?.0)?;
                if !matches!(self.drains.get(host), Some((_, DrainState::Draining))) {
                    continue;
                }
                let op = format!("{host}-{job}-{i}");
                let k = (job.clone(), op);
                if self.ops.contains_key(&k) {
                    continue;
                }
                let rec = OpRecord {
                    index: i,
                    kind: "move".into(),
                    from: host.to_owned(),
                    state: OpState::Offered,
                };
                offer.push((k, rec));
            }
        }
        for chunk in offer.chunks(100) {
            let txn =
                Txn::new()
                    .when([self.fence()])
                    .and_then(chunk.iter().map(|((job, op), rec)| {
                        Op::put(
                            keys::taskcontrol_op(&self.name, job, op),
                            model::encode(rec),
                        )
                    }));
            if !store.txn(txn).await?.succeeded {
                return Ok(Outcome::Deposed);
            }
            for (k, rec) in chunk {
                self.ops.insert(k.clone(), (rec.clone(), false));
            }
        }
        // 2. Move what was acked.
        let acked: Vec<(String, String)> = self
            .ops
            .iter()
            .filter(|(_, (_, a))| *a)
            .map(|(k, _)| k.clone())
            .collect();
        for (job, op) in acked {
            let Some((rec, _)) = self.ops.get(&(job.clone(), op.clone())).cloned() else {
                continue;
            };
            let op_keys = [
                Op::delete(keys::taskcontrol_op(&self.name, &job, &op)),
                Op::delete(keys::taskcontrol_ack(&self.name, &job, &op)),
            ];
            let found = self
                .jobs
                .get(&job)
                .and_then(|js| js.placed.get(&rec.index).map(|&t| (js.id, t)));
            let current = match found {
                Some((jid, t)) => {
                    let h = self.alloc.task(t)?.0;
                    (self.host_name(h)? == rec.from).then_some((jid, t))
                }
                None => None,
            };
            let Some((jid, t)) = current else {
                // The task is not on that host any more: the operation is void.
                let txn = Txn::new().when([self.fence()]).and_then(op_keys);
                if !store.txn(txn).await?.succeeded {
                    return Ok(Outcome::Deposed);
                }
                self.ops.remove(&(job, op));
                continue;
            };
            // The destination, chosen like a placement: a probe task of the same job
            // and demand is placed and freed, then the task moves there.
            let d = self.alloc.task_view(t)?.demand;
            let probe = self.new_task()?;
            let out = self.alloc.apply(&self.request(jid).allocate(probe, d))?;
            let Some(to) = out.placed.first().map(|p| p.host) else {
                continue; // nowhere to go now; tried again next round
            };
            self.alloc.apply(&self.request(jid).free(probe))?;
            let moved = match self.alloc.move_task(t, to) {
                Ok(m) => m,
                Err(AllocError::MoveRefused { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let to_name = self.host_name(to)?.to_owned();
            let mut when = vec![self.fence()];
            let mut ops = Vec::new();
            let mut otherwise = vec![Op::get(keys::ent_leader(&self.name))];
            if let Some(j) = moved.host_joined {
                let host = self.host_name(j)?.to_owned();
                when.push(Compare::value(keys::host_owner(&host), CmpOp::Equal, FREE));
                when.push(Compare::create_revision(
                    keys::host_drain(&host),
                    CmpOp::Equal,
                    0,
                ));
                ops.push(Op::put(keys::host_owner(&host), self.name.clone()));
                otherwise.push(Op::get(keys::host_owner(&host)));
                done.joined.push(host);
            }
            if let Some(r) = moved.host_released {
                ops.push(Op::put(keys::host_owner(self.host_name(r)?), FREE));
            }
            let task = TaskRecord {
                host: to_name.clone(),
                demand: p_demand(self, t)?,
                writer: self.scheduler.clone(),
                epoch: self.epoch,
            };
            let assign = Assignment {
                entitlement: self.name.clone(),
                job: job.clone(),
                index: rec.index,
                demand: task.demand,
            };
            ops.push(Op::put(
                keys::task(&self.name, &job, rec.index),
                model::encode(&task),
            ));
            ops.push(Op::delete(keys::assign(&rec.from, &job, rec.index)));
            ops.push(Op::put(
                keys::assign(&to_name, &job, rec.index),
                model::encode(&assign),
            ));
            ops.extend(op_keys);
            let txn = Txn::new().when(when).and_then(ops).or_else(otherwise);
            let res = store.txn(txn).await?;
            if !res.succeeded {
                let leader = res.responses.first().and_then(|r| r.first());
                if leader.is_none_or(|kv| kv.create_revision != self.epoch) {
                    return Ok(Outcome::Deposed);
                }
                return Ok(Outcome::Rebuild);
            }
            tracing::info!(entitlement = %self.name, task = %format!("{job}/{}", rec.index), from = %rec.from, to = %to_name, "moved (acked)");
            self.ops.remove(&(job, op));
            done.tasks += 1;
            done.txns += 1;
            self.dirty = true;
        }
        // 3. Mark drained what this entitlement has left.
        let draining: Vec<(String, Revision)> = self
            .drains
            .iter()
            .filter(|(_, (_, st))| *st == DrainState::Draining)
            .map(|(h, (rev, _))| (h.clone(), *rev))
            .collect();
        for (host, rev) in draining {
            let id = self.host_id(&host)?;
            if !self.alloc.host(id)?.tasks().is_empty()
                || self.ops.values().any(|(r, _)| r.from == host)
            {
                continue;
            }
            let owner = view.hosts.get(&host).and_then(|h| h.owner.clone());
            let mut ops = vec![Op::put(
                keys::host_drain(&host),
                model::encode(&DrainRecord {
                    state: DrainState::Drained,
                }),
            )];
            match owner.as_deref() {
                Some(FREE) => {}
                Some(o) if o == self.name => ops.push(Op::put(keys::host_owner(&host), FREE)),
                _ => continue,
            }
            let txn = Txn::new()
                .when([
                    self.fence(),
                    Compare::mod_revision(keys::host_drain(&host), CmpOp::Equal, rev),
                    Compare::value(
                        keys::host_owner(&host),
                        CmpOp::Equal,
                        owner.unwrap_or_default(),
                    ),
                ])
                .and_then(ops)
                .or_else([Op::get(keys::ent_leader(&self.name))]);
            let res = store.txn(txn).await?;
            if res.succeeded {
                tracing::info!(entitlement = %self.name, %host, "drained");
                self.drains
                    .insert(host, (res.revision, DrainState::Drained));
            } else if res
                .responses
                .first()
                .and_then(|r| r.first())
                .is_none_or(|kv| kv.create_revision != self.epoch)
            {
                return Ok(Outcome::Deposed);
            }
        }
        Ok(Outcome::Leading(done))
    }
}
