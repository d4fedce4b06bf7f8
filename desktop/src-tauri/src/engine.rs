//! A machine's Docker engine through its `docker.sock` (bollard): containers, images,
//! volumes and networks as rows for the UI, and the actions on them. Every function here
//! is a plain async function the Tauri commands wrap.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptions,
    ListVolumesOptions, PruneImagesOptionsBuilder, PruneVolumesOptions,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
    RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use rmachine_machine::lifecycle::Lifecycle;
use rmachine_machine::state::State;
use serde::{Deserialize, Serialize};

use crate::error::{CommandError, CommandResult, ErrorKind};

/// The compose project label (`docker compose` sets it on every container it makes).
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// The compose service label.
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// How long an engine request may take, in seconds.
const ENGINE_TIMEOUT_S: u64 = 120;

/// A client of machine `name`'s engine; a machine that is not running is `NotRunning`.
pub fn connect(lc: &Lifecycle, name: &str) -> CommandResult<Docker> {
    connect_socket(&socket(lc, name)?)
}

/// Where machine `name`'s engine listens (a unix socket, a named pipe on Windows); a
/// machine that is not running is `NotRunning`.
pub fn socket(lc: &Lifecycle, name: &str) -> CommandResult<PathBuf> {
    let machine = lc.store().load(name)?;
    if machine.state.state != State::Running {
        return Err(CommandError::not_running(name));
    }
    Ok(machine.files.docker_endpoint().path())
}

/// Machine `name`'s engine as the docker CLI's `DOCKER_HOST` (`unix://…`, `npipe://…`); a
/// machine that is not running is `NotRunning`.
pub fn docker_host(lc: &Lifecycle, name: &str) -> CommandResult<String> {
    let machine = lc.store().load(name)?;
    if machine.state.state != State::Running {
        return Err(CommandError::not_running(name));
    }
    Ok(machine.files.docker_endpoint().docker_host())
}

/// A client of the engine at a local endpoint (a unix socket, a named pipe on Windows).
pub fn connect_socket(socket: &Path) -> CommandResult<Docker> {
    Docker::connect_with_local(
        &socket.to_string_lossy(),
        ENGINE_TIMEOUT_S,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(CommandError::from)
}

/// A published port of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortRow {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
    /// `http://localhost:PORT` for a TCP port (the UI opens it in the browser).
    pub url: Option<String>,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerRow {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `running`, `exited`, `created`, `paused`, `restarting`, `removing`, `dead`.
    pub state: String,
    /// The engine's words: "Up 3 minutes", "Exited (0) 2 seconds ago".
    pub status: String,
    pub created: i64,
    pub ports: Vec<PortRow>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
}

/// Containers of one compose project, or the ones of none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerGroup {
    /// The compose project, `None` for standalone containers.
    pub project: Option<String>,
    pub containers: Vec<ContainerRow>,
}

/// A container summary as a row.
pub fn container_row(c: bollard::models::ContainerSummary) -> ContainerRow {
    let labels = c.labels.unwrap_or_default();
    let mut ports: Vec<PortRow> = c
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let host_port = p.public_port?;
            let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
            let url = (proto == "tcp").then(|| format!("http://localhost:{host_port}"));
            Some(PortRow {
                host_ip: p.ip.unwrap_or_default(),
                host_port,
                container_port: p.private_port,
                proto,
                url,
            })
        })
        .collect();
    // The engine lists a port once for 0.0.0.0 and once for ::; one row is enough.
    ports.sort_by(|a, b| {
        (a.host_port, &a.proto, &a.host_ip).cmp(&(b.host_port, &b.proto, &b.host_ip))
    });
    ports.dedup_by(|a, b| {
        a.host_port == b.host_port && a.proto == b.proto && a.container_port == b.container_port
    });
    let name = c
        .names
        .unwrap_or_default()
        .first()
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    ContainerRow {
        id: c.id.unwrap_or_default(),
        name,
        image: c.image.unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.unwrap_or_default(),
        created: c.created.unwrap_or(0),
        ports,
        compose_project: labels.get(COMPOSE_PROJECT).cloned(),
        compose_service: labels.get(COMPOSE_SERVICE).cloned(),
    }
}

/// Rows grouped by compose project (projects by name, then standalone containers).
pub fn group_containers(rows: Vec<ContainerRow>) -> Vec<ContainerGroup> {
    let mut projects: BTreeMap<String, Vec<ContainerRow>> = BTreeMap::new();
    let mut standalone = Vec::new();
    for r in rows {
        match &r.compose_project {
            Some(p) => projects.entry(p.clone()).or_default().push(r),
            None => standalone.push(r),
        }
    }
    let mut groups: Vec<ContainerGroup> = projects
        .into_iter()
        .map(|(p, mut c)| {
            c.sort_by(|a, b| a.name.cmp(&b.name));
            ContainerGroup {
                project: Some(p),
                containers: c,
            }
        })
        .collect();
    if !standalone.is_empty() {
        standalone.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
        groups.push(ContainerGroup {
            project: None,
            containers: standalone,
        });
    }
    groups
}

/// Every container (running or not), grouped by compose project.
pub async fn containers(docker: &Docker) -> CommandResult<Vec<ContainerGroup>> {
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await?;
    Ok(group_containers(
        list.into_iter().map(container_row).collect(),
    ))
}

/// What to do with a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerAction {
    Start,
    Stop,
    Restart,
    /// Remove (forcibly, with its anonymous volumes).
    Remove,
}

/// Applies `action` to container `id`.
pub async fn container_action(
    docker: &Docker,
    id: &str,
    action: ContainerAction,
) -> CommandResult<()> {
    match action {
        ContainerAction::Start => {
            docker
                .start_container(id, None::<StartContainerOptions>)
                .await?
        }
        ContainerAction::Stop => {
            docker
                .stop_container(id, None::<StopContainerOptions>)
                .await?
        }
        ContainerAction::Restart => {
            docker
                .restart_container(id, None::<RestartContainerOptions>)
                .await?
        }
        ContainerAction::Remove => {
            docker
                .remove_container(
                    id,
                    Some(
                        RemoveContainerOptionsBuilder::new()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await?
        }
    }
    Ok(())
}

/// The engine's inspect document of a container, pretty-printed.
pub async fn inspect_container(docker: &Docker, id: &str) -> CommandResult<String> {
    let doc = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    serde_json::to_string_pretty(&doc)
        .map_err(|e| CommandError::new(ErrorKind::Internal, e.to_string()))
}

/// One image (one row per image, with all its tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    pub id: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub created: i64,
    /// Containers (running or not) made from it.
    pub containers: i64,
}

pub async fn images(docker: &Docker) -> CommandResult<Vec<ImageRow>> {
    let list = docker
        .list_images(Some(ListImagesOptionsBuilder::new().all(false).build()))
        .await?;
    // The engine counts an image's containers only on request (slowly): count them here.
    let mut used: HashMap<String, i64> = HashMap::new();
    for c in docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await?
    {
        *used.entry(c.image_id.unwrap_or_default()).or_default() += 1;
    }
    let mut rows: Vec<ImageRow> = list
        .into_iter()
        .map(|i| ImageRow {
            tags: i
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect(),
            size: i.size,
            created: i.created,
            containers: used.get(&i.id).copied().unwrap_or(0),
            id: i.id,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.created));
    Ok(rows)
}

pub async fn remove_image(docker: &Docker, id: &str, force: bool) -> CommandResult<()> {
    docker
        .remove_image(
            id,
            Some(RemoveImageOptionsBuilder::new().force(force).build()),
            None,
        )
        .await?;
    Ok(())
}

/// What a prune freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub removed: usize,
    pub reclaimed_bytes: i64,
}

/// Removes every image no container uses (`docker image prune -a`).
pub async fn prune_images(docker: &Docker) -> CommandResult<Pruned> {
    let filters = HashMap::from([("dangling".to_string(), vec!["false".to_string()])]);
    let r = docker
        .prune_images(Some(
            PruneImagesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await?;
    Ok(Pruned {
        removed: r.images_deleted.map(|d| d.len()).unwrap_or(0),
        reclaimed_bytes: r.space_reclaimed.unwrap_or(0),
    })
}

/// How a tarball becomes an image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImportRequest {
    /// An archive written by `docker save` (`docker load`).
    Archive { path: String },
    /// A root filesystem tarball (`docker import PATH REFERENCE`).
    Rootfs { path: String, reference: String },
}

/// Imports a tarball; returns what the engine said (the image's name or id).
pub async fn import_image(docker: &Docker, request: &ImportRequest) -> CommandResult<String> {
    let path = match request {
        ImportRequest::Archive { path } | ImportRequest::Rootfs { path, .. } => path,
    };
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        CommandError::new(
            ErrorKind::Io,
            format!("cannot read {path}: {e}; check the path, or choose the file with Browse…"),
        )
    })?;
    let mut said = Vec::new();
    match request {
        ImportRequest::Archive { .. } => {
            let mut stream = docker.import_image(
                ImportImageOptionsBuilder::new().quiet(true).build(),
                bollard::body_full(bytes.into()),
                None,
            );
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| {
                    let e = CommandError::from(e);
                    CommandError::new(
                        e.kind,
                        format!(
                            "{}; is {path} an archive written by docker save (or Save… here)? A root filesystem tarball is imported with the kind \"Root filesystem\"",
                            e.message
                        ),
                    )
                })?;
                if let Some(s) = item.stream {
                    said.push(s.trim().to_string());
                }
            }
        }
        ImportRequest::Rootfs { reference, .. } => {
            let (repo, tag) = split_reference(reference);
            let options = CreateImageOptionsBuilder::new()
                .from_src("-")
                .repo(repo)
                .tag(tag)
                .build();
            let mut stream =
                docker.create_image(Some(options), Some(bollard::body_full(bytes.into())), None);
            while let Some(item) = stream.next().await {
                if let Some(s) = item?.status {
                    said.push(s.trim().to_string());
                }
            }
        }
    }
    Ok(said
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Writes image `reference` (a name:tag or an id) as a `docker save` archive to `path`;
/// returns its size in bytes. A failed save leaves no file behind.
pub async fn save_image(docker: &Docker, reference: &str, path: &Path) -> CommandResult<u64> {
    use tokio::io::AsyncWriteExt;
    let io_err = |e: std::io::Error| {
        CommandError::new(
            ErrorKind::Io,
            format!(
                "cannot write {}: {e}; choose a folder you can write to, with room for the image",
                path.display()
            ),
        )
    };
    let file = tokio::fs::File::create(path).await.map_err(io_err)?;
    let mut file = tokio::io::BufWriter::new(file);
    let mut stream = docker.export_image(reference);
    let mut size = 0u64;
    let result: CommandResult<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)
    }
    .await;
    if let Err(e) = result {
        drop(file);
        let _ = tokio::fs::remove_file(path).await;
        return Err(e);
    }
    Ok(size)
}

/// `repo[:tag]` (a registry port is not a tag) into repo and tag (default `latest`).
pub fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rfind(':') {
        Some(i) if !reference[i + 1..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeRow {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub created: Option<String>,
    pub compose_project: Option<String>,
}

pub async fn volumes(docker: &Docker) -> CommandResult<Vec<VolumeRow>> {
    let list = docker.list_volumes(None::<ListVolumesOptions>).await?;
    let mut rows: Vec<VolumeRow> = list
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| VolumeRow {
            compose_project: v.labels.get(COMPOSE_PROJECT).cloned(),
            name: v.name,
            driver: v.driver,
            mountpoint: v.mountpoint,
            created: v.created_at.map(|d| d.to_string()),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub async fn remove_volume(docker: &Docker, name: &str) -> CommandResult<()> {
    docker
        .remove_volume(
            name,
            Some(RemoveVolumeOptionsBuilder::new().force(false).build()),
        )
        .await?;
    Ok(())
}

/// Removes the anonymous volumes no container uses (`docker volume prune`).
pub async fn prune_volumes(docker: &Docker) -> CommandResult<Pruned> {
    let r = docker.prune_volumes(None::<PruneVolumesOptions>).await?;
    Ok(Pruned {
        removed: r.volumes_deleted.map(|d| d.len()).unwrap_or(0),
        reclaimed_bytes: r.space_reclaimed.unwrap_or(0),
    })
}

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkRow {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub scope: String,
    pub subnets: Vec<String>,
    pub internal: bool,
}

pub async fn networks(docker: &Docker) -> CommandResult<Vec<NetworkRow>> {
    let list = docker.list_networks(None::<ListNetworksOptions>).await?;
    let mut rows: Vec<NetworkRow> = list
        .into_iter()
        .map(|n| NetworkRow {
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            driver: n.driver.unwrap_or_default(),
            scope: n.scope.unwrap_or_default(),
            subnets: n
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect(),
            internal: n.internal.unwrap_or(false),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, Port, PortTypeEnum};

    fn summary(name: &str, project: Option<&str>, ports: Vec<Port>) -> ContainerSummary {
        let labels = project.map(|p| HashMap::from([(COMPOSE_PROJECT.to_string(), p.to_string())]));
        ContainerSummary {
            id: Some(format!("id-{name}")),
            names: Some(vec![format!("/{name}")]),
            image: Some("busybox".into()),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 1 second".into()),
            ports: Some(ports),
            labels,
            ..Default::default()
        }
    }

    #[test]
    fn test_container_rows_link_tcp_ports_once() {
        let port = |ip: &str, typ| Port {
            ip: Some(ip.into()),
            private_port: 80,
            public_port: Some(8080),
            typ: Some(typ),
        };
        let row = container_row(summary(
            "web",
            None,
            vec![
                port("0.0.0.0", PortTypeEnum::TCP),
                port("::", PortTypeEnum::TCP),
                port("0.0.0.0", PortTypeEnum::UDP),
                Port {
                    ip: None,
                    private_port: 9000,
                    public_port: None,
                    typ: Some(PortTypeEnum::TCP),
                },
            ],
        ));
        assert_eq!(row.name, "web");
        assert_eq!(row.state, "running");
        assert_eq!(row.ports.len(), 2, "{:?}", row.ports);
        let tcp = row.ports.iter().find(|p| p.proto == "tcp").unwrap();
        assert_eq!(tcp.url.as_deref(), Some("http://localhost:8080"));
        assert!(row
            .ports
            .iter()
            .find(|p| p.proto == "udp")
            .unwrap()
            .url
            .is_none());
    }

    #[test]
    fn test_containers_grouped_by_compose_project() {
        let rows = ["b", "a", "solo"]
            .into_iter()
            .map(|n| container_row(summary(n, (n != "solo").then_some("shop"), vec![])))
            .collect();
        let groups = group_containers(rows);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].project.as_deref(), Some("shop"));
        assert_eq!(
            groups[0]
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(groups[1].project, None);
    }

    #[test]
    fn test_split_reference_keeps_registry_port() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("bb:1"), ("bb", "1"));
        assert_eq!(split_reference("reg:5000/bb"), ("reg:5000/bb", "latest"));
        assert_eq!(split_reference("reg:5000/bb:2"), ("reg:5000/bb", "2"));
    }
}
