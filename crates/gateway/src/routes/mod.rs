//! HTTP routes, one file per resource; handlers are named by verb.

pub mod health;
pub mod messages;
mod pages;
pub mod presence;
pub mod rooms;
pub mod sessions;
pub mod thread_list;
pub mod threads;
pub mod users;
pub mod ws;

use actix_web::web;

/// Mount every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::alive))
        .route("/readyz", web::get().to(health::ready))
        .route("/metrics", web::get().to(health::metrics))
        .route("/ws", web::get().to(ws::upgrade))
        .service(
            web::scope("/api/v1")
                .route("/users", web::post().to(users::register))
                .route("/users", web::get().to(users::search))
                .route("/presence", web::get().to(presence::get))
                .route("/sessions", web::post().to(sessions::login))
                .route("/sessions", web::delete().to(sessions::logout))
                .route("/threads", web::post().to(threads::create))
                .route("/threads/{id}/messages", web::get().to(threads::history))
                .route(
                    "/threads/{id}/members",
                    web::post().to(threads::add_members),
                )
                .route("/threads/{id}/members/me", web::delete().to(threads::leave))
                .route("/threads", web::get().to(thread_list::list))
                .route("/threads/{id}", web::get().to(thread_list::show))
                .route("/threads/{id}/read", web::post().to(thread_list::mark_read))
                .route("/rooms", web::get().to(rooms::list))
                // Before `/rooms/{id}/join`, which would take "random" for an id.
                .route("/rooms/random/join", web::post().to(rooms::join_random))
                .route("/rooms/{id}/join", web::post().to(rooms::join))
                .route("/messages/{id}/report", web::post().to(messages::report)),
        );
}
